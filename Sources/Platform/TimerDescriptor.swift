import CLinuxSystem
import Glibc

/// A monotonic timer descriptor (timerfd) with one expiry at a time: an
/// epoll loop's wake for a deadline, armed once, instead of a short timeout
/// on every wait.
public final class TimerDescriptor {
    public let fd: Int32

    public init() throws(SystemCallError) {
        fd = shim_timerfd()
        guard fd >= 0 else { throw .lastError("timerfd_create") }
    }

    deinit { close(fd) }

    /// The expiry, `nanoseconds` from now (at least 1), in place of any armed before.
    public func arm(afterNanoseconds nanoseconds: Int64) {
        _ = shim_timerfd_arm(fd, nanoseconds)
    }

    /// After its expiry: reads the count, so the descriptor is not readable until the next.
    public func clear() {
        var expirations: UInt64 = 0
        _ = read(fd, &expirations, 8)
    }
}
