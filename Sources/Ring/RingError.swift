import Glibc

/// A failed system call or io_uring operation: what was attempted and the errno.
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
        let text = String(cString: strerror(errno))
        if let name = symbolicNames[errno] { return "\(text) (\(name))" }
        return "\(text) (errno \(errno))"
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
