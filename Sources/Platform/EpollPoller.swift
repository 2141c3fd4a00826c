import CLinuxSystem
import Glibc

/// One epoll instance and its preallocated event buffer, used by exactly one thread.
///
/// The load tools' loops register level-triggered: a handler may stop early (fairness,
/// back-pressure) and the kernel reports the descriptor again, and a stray event costs
/// one EAGAIN. The proxy's epoll backend registers edge-triggered (`EpollFlag.edgeTriggered`)
/// and keeps the readiness itself.
public final class EpollPoller {
    public struct Event {
        public let flags: UInt32
        public let token: UInt64
    }

    private let fd: Int32
    private let eventBuffer: UnsafeMutablePointer<shim_epoll_ready>
    private let eventCapacity: Int

    public init(eventCapacity: Int = 256) throws(SystemCallError) {
        fd = shim_epoll_create()
        guard fd >= 0 else { throw .lastError("epoll_create1") }
        self.eventCapacity = eventCapacity
        eventBuffer = .allocate(capacity: eventCapacity)
    }

    deinit {
        close(fd)
        eventBuffer.deallocate()
    }

    public func add(_ watched: Int32, flags: UInt32, token: UInt64) throws(SystemCallError) {
        try control(EpollOperation.add, watched, flags: flags, token: token, name: "epoll_ctl(ADD)")
    }

    public func modify(_ watched: Int32, flags: UInt32, token: UInt64) throws(SystemCallError) {
        try control(EpollOperation.modify, watched, flags: flags, token: token, name: "epoll_ctl(MOD)")
    }

    /// Stops watching `watched`. Needed before closing a descriptor whose
    /// open socket lives on elsewhere (a listener handed to another
    /// process): epoll forgets it only when the last reference closes.
    public func remove(_ watched: Int32) throws(SystemCallError) {
        try control(EpollOperation.remove, watched, flags: 0, token: 0, name: "epoll_ctl(DEL)")
    }

    private func control(_ operation: Int32, _ watched: Int32, flags: UInt32, token: UInt64, name: String) throws(SystemCallError) {
        guard shim_epoll_control(fd, operation, watched, flags, token) == 0 else { throw .lastError(name) }
    }

    /// Waits up to `timeoutMs` (-1: forever) and returns how many events are ready;
    /// 0 on timeout or a signal.
    public func wait(timeoutMs: Int32) -> Int {
        let count = shim_epoll_wait(fd, eventBuffer, Int32(eventCapacity), timeoutMs)
        return count > 0 ? Int(count) : 0
    }

    /// Waits up to `timeoutNanos`: the open-loop client's schedule needs finer than milliseconds.
    public func wait(timeoutNanos: UInt64) -> Int {
        let count = shim_epoll_wait_ns(fd, eventBuffer, Int32(eventCapacity), Int64(min(timeoutNanos, 1_000_000_000)))
        return count > 0 ? Int(count) : 0
    }

    public func event(at index: Int) -> Event {
        Event(flags: eventBuffer[index].events, token: eventBuffer[index].token)
    }
}

/// epoll's event bits, as the loops name them.
public enum EpollFlag {
    public static let readable = EPOLLIN.rawValue
    public static let writable = EPOLLOUT.rawValue
    public static let error = EPOLLERR.rawValue
    public static let hangUp = EPOLLHUP.rawValue
    public static let peerShutdown = EPOLLRDHUP.rawValue
    public static let edgeTriggered = EPOLLET.rawValue
}

public enum EpollOperation {
    public static let add = EPOLL_CTL_ADD
    public static let remove = EPOLL_CTL_DEL
    public static let modify = EPOLL_CTL_MOD
}

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC (not in Swift's Glibc module):
/// the client's descriptor, or -1 with errno set.
public func acceptNonBlocking(_ listener: Int32) -> Int32 {
    accept4(listener, nil, nil, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
}
