import Glibc
import Platform

/// A failed io_uring setup call or operation: what was attempted and the
/// errno. Other failed system calls are `Platform.SystemCallError`s.
public struct RingError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno < 0 ? -errno : errno
    }

    public var description: String {
        "\(operation): \(RingError.describe(errno: errno))"
    }

    /// `strerror` text plus the symbolic name, e.g. "Connection refused (ECONNREFUSED)".
    public static func describe(errno: Int32) -> String {
        SystemCallError.describe(errorNumber: errno)
    }
}
