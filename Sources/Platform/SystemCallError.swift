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

extension SystemCallError {
    /// strerror's text and the errno's name, "Connection refused
    /// (ECONNREFUSED)": what the proxy's messages say of a failed call.
    public static func describe(errorNumber: Int32) -> String {
        let text = String(cString: strerror(errorNumber))
        if let name = symbolicNames[errorNumber] { return "\(text) (\(name))" }
        return "\(text) (errno \(errorNumber))"
    }

    /// What was attempted and `describe(errorNumber:)`: "bind to 127.0.0.1:8080:
    /// Address already in use (EADDRINUSE)".
    public var detailedDescription: String {
        "\(operation): \(Self.describe(errorNumber: errorNumber))"
    }

    private static let symbolicNames: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EBADF: "EBADF", EAGAIN: "EAGAIN",
        ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EINVAL: "EINVAL",
        ENFILE: "ENFILE", EMFILE: "EMFILE", ENOSPC: "ENOSPC", EPIPE: "EPIPE", ENOSYS: "ENOSYS",
        ECANCELED: "ECANCELED", ETIME: "ETIME", ETIMEDOUT: "ETIMEDOUT", ECONNREFUSED: "ECONNREFUSED",
        ECONNRESET: "ECONNRESET", ECONNABORTED: "ECONNABORTED", EADDRINUSE: "EADDRINUSE",
        EADDRNOTAVAIL: "EADDRNOTAVAIL", ENETUNREACH: "ENETUNREACH", EHOSTUNREACH: "EHOSTUNREACH",
        ENOTCONN: "ENOTCONN", ENOBUFS: "ENOBUFS", EOPNOTSUPP: "EOPNOTSUPP", EAFNOSUPPORT: "EAFNOSUPPORT",
    ]
}

/// strerror's text for an errno ("Connection refused").
public func errorDescription(_ errorNumber: Int32) -> String {
    String(cString: strerror(errorNumber))
}
