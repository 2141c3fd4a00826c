import Glibc

/// A failed system call: what was attempted and the errno it gave.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was attempted, e.g. "bind 127.0.0.1:8080".
    public let operation: String
    public let errorNumber: Int32

    public init(operation: String, errorNumber: Int32) {
        self.operation = operation
        self.errorNumber = errorNumber
    }

    /// The error of the call that just failed on this thread.
    public static func lastError(_ operation: String) -> SystemCallError {
        SystemCallError(operation: operation, errorNumber: errno)
    }

    public var description: String {
        "\(operation): \(errorDescription(errorNumber))"
    }
}

/// strerror's text for an errno ("Connection refused").
public func errorDescription(_ errorNumber: Int32) -> String {
    String(cString: strerror(errorNumber))
}
