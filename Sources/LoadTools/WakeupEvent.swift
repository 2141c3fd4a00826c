import CLinuxSystem
import Glibc
import Platform

/// An eventfd that another thread signals to wake an epoll loop (to stop it).
struct WakeupEvent: Sendable {
    let fd: Int32

    init() throws(SystemCallError) {
        fd = shim_eventfd()
        guard fd >= 0 else { throw .lastError("eventfd") }
    }

    func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    func drain() {
        var count: UInt64 = 0
        _ = read(fd, &count, 8)
    }

    func close() {
        _ = Glibc.close(fd)
    }
}
