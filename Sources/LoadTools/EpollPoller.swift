import CLinuxSystem
import Glibc
import Platform

/// One epoll instance and its preallocated event buffer, used by exactly one thread.
///
/// Level-triggered throughout: a handler may stop early (fairness, back-pressure) and
/// the kernel reports the descriptor again, and a stray event costs one EAGAIN.
final class EpollPoller {
    struct Event {
        let flags: UInt32
        let token: UInt64
    }

    private let fd: Int32
    private let eventBuffer: UnsafeMutablePointer<shim_epoll_ready>
    private let eventCapacity: Int

    init(eventCapacity: Int = 256) throws(SystemCallError) {
        fd = shim_epoll_create()
        guard fd >= 0 else { throw .lastError("epoll_create1") }
        self.eventCapacity = eventCapacity
        eventBuffer = .allocate(capacity: eventCapacity)
    }

    deinit {
        close(fd)
        eventBuffer.deallocate()
    }

    func add(_ watched: Int32, flags: UInt32, token: UInt64) throws(SystemCallError) {
        try control(EpollOperation.add, watched, flags: flags, token: token, name: "epoll_ctl(ADD)")
    }

    func modify(_ watched: Int32, flags: UInt32, token: UInt64) throws(SystemCallError) {
        try control(EpollOperation.modify, watched, flags: flags, token: token, name: "epoll_ctl(MOD)")
    }

    private func control(_ operation: Int32, _ watched: Int32, flags: UInt32, token: UInt64, name: String) throws(SystemCallError) {
        guard shim_epoll_control(fd, operation, watched, flags, token) == 0 else { throw .lastError(name) }
    }

    /// Waits up to `timeoutMs` (-1: forever) and returns how many events are ready;
    /// 0 on timeout or a signal.
    func wait(timeoutMs: Int32) -> Int {
        let count = shim_epoll_wait(fd, eventBuffer, Int32(eventCapacity), timeoutMs)
        return count > 0 ? Int(count) : 0
    }

    /// Waits up to `timeoutNanos`: the open-loop client's schedule needs finer than milliseconds.
    func wait(timeoutNanos: UInt64) -> Int {
        let count = shim_epoll_wait_ns(fd, eventBuffer, Int32(eventCapacity), Int64(min(timeoutNanos, 1_000_000_000)))
        return count > 0 ? Int(count) : 0
    }

    func event(at index: Int) -> Event {
        Event(flags: eventBuffer[index].events, token: eventBuffer[index].token)
    }
}

/// epoll's event bits, as the loops name them.
enum EpollFlag {
    static let readable = EPOLLIN.rawValue
    static let writable = EPOLLOUT.rawValue
    static let error = EPOLLERR.rawValue
    static let hangUp = EPOLLHUP.rawValue
    static let peerShutdown = EPOLLRDHUP.rawValue
}

enum EpollOperation {
    static let add = EPOLL_CTL_ADD
    static let remove = EPOLL_CTL_DEL
    static let modify = EPOLL_CTL_MOD
}
