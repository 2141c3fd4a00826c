import Glibc

/// One epoll instance and its preallocated event buffer, used by exactly one thread.
///
/// Level-triggered throughout: a handler may stop early (fairness, back-pressure) and
/// the kernel reports the descriptor again, and a stray event costs one EAGAIN.
final class EpollPoller {
    struct Event {
        let flags: UInt32
        let token: UInt64
    }

    // struct epoll_event is packed on x86_64 (12 bytes, data at offset 4) and
    // naturally aligned elsewhere (16 bytes, data at offset 8).
    #if arch(x86_64)
    private static let eventStrideBytes = 12
    private static let eventTokenOffset = 4
    #else
    private static let eventStrideBytes = 16
    private static let eventTokenOffset = 8
    #endif

    private let calls: LinuxCalls
    private let fd: Int32
    private let eventBuffer: UnsafeMutableRawPointer
    private let eventCapacity: Int

    init(eventCapacity: Int = 1024) throws(SystemCallError) {
        calls = try LinuxCalls.required()
        fd = calls.epollCreate1(O_CLOEXEC)
        guard fd >= 0 else { throw .lastError("epoll_create1") }
        self.eventCapacity = eventCapacity
        eventBuffer = .allocate(byteCount: eventCapacity * Self.eventStrideBytes, alignment: 8)
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
        // One event written into a local of the kernel's layout.
        var raw: (UInt64, UInt64) = (0, 0)
        let result = withUnsafeMutableBytes(of: &raw) { bytes in
            bytes.storeBytes(of: flags, toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: token, toByteOffset: Self.eventTokenOffset, as: UInt64.self)
            return calls.epollControl(fd, operation, watched, bytes.baseAddress)
        }
        guard result == 0 else { throw .lastError(name) }
    }

    /// Waits up to `timeoutMs` (-1: forever) and returns how many events are ready;
    /// 0 on timeout or a signal.
    func wait(timeoutMs: Int32) -> Int {
        let count = calls.epollWait(fd, eventBuffer, Int32(eventCapacity), timeoutMs)
        return count > 0 ? Int(count) : 0
    }

    func event(at index: Int) -> Event {
        let base = eventBuffer + index * Self.eventStrideBytes
        return Event(
            flags: base.loadUnaligned(as: UInt32.self),
            token: base.loadUnaligned(fromByteOffset: Self.eventTokenOffset, as: UInt64.self))
    }
}
