import Glibc
import Platform

/// `ReplayIO` on epoll, where io_uring cannot run: non-blocking sockets
/// registered edge-triggered; an operation is tried at once and, on
/// EAGAIN, again when the socket says it is ready. Results are queued and
/// handed to the engine by the loop (never from inside the engine's call),
/// so the engine sees completions as it does from the ring.
public final class EpollReplayDriver: ReplayIO {
    private struct Pending {
        var connecting = false
        var connectStartUs: UInt64 = 0
        var send: (UnsafeRawPointer, Int)?
        var receive: (UnsafeMutableRawPointer, Int)?
        var fd: Int32 = -1
    }

    private enum Kind { case connect, send, receive }

    private let poller: EpollPoller
    private let target: SocketAddress
    /// A connect not answered in this long fails with ETIMEDOUT (the ring's is a linked timeout).
    private let connectTimeoutUs: UInt64
    private var connectsInProgress = 0
    private var pending: [Pending] = []
    private var ready: [(Kind, Int, Int32)] = []

    public init(target: SocketAddress, connectTimeoutMs: Int = 1000) throws(SystemCallError) {
        poller = try EpollPoller(eventCapacity: 512)
        self.target = target
        connectTimeoutUs = UInt64(max(1, connectTimeoutMs)) * 1000
    }

    private func ensure(_ slot: Int) {
        while pending.count <= slot { pending.append(Pending()) }
    }

    public func connect(slot: Int, fd: Int32) {
        ensure(slot)
        pending[slot] = Pending(fd: fd)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        do {
            try poller.add(fd, flags: EpollFlag.readable | EpollFlag.writable | EpollFlag.peerShutdown | EpollFlag.edgeTriggered,
                           token: UInt64(slot))
        } catch {
            ready.append((.connect, slot, -error.errorNumber))
            return
        }
        var storage = target.storage
        let result = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, target.length) }
        }
        if result == 0 {
            ready.append((.connect, slot, 0))
        } else if errno == EINPROGRESS {
            pending[slot].connecting = true
            pending[slot].connectStartUs = MonotonicClock.nowMicros()
            connectsInProgress += 1
        } else {
            ready.append((.connect, slot, -errno))
        }
    }

    public func send(slot: Int, fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) {
        pending[slot].send = (bytes, count)
        trySend(slot)
    }

    public func receive(slot: Int, fd: Int32, into buffer: UnsafeMutableRawPointer, _ count: Int) {
        pending[slot].receive = (buffer, count)
        tryReceive(slot)
    }

    private func trySend(_ slot: Int) {
        guard let (bytes, count) = pending[slot].send else { return }
        let result = Glibc.send(pending[slot].fd, bytes, count, Int32(MSG_NOSIGNAL))
        if result < 0 && (errno == EAGAIN || errno == EINTR) { return }
        pending[slot].send = nil
        ready.append((.send, slot, result < 0 ? -errno : Int32(result)))
    }

    private func tryReceive(_ slot: Int) {
        guard let (buffer, count) = pending[slot].receive else { return }
        let result = recv(pending[slot].fd, buffer, count, 0)
        if result < 0 && (errno == EAGAIN || errno == EINTR) { return }
        pending[slot].receive = nil
        ready.append((.receive, slot, result < 0 ? -errno : Int32(result)))
    }

    /// Runs `engine` until every session is done; `progress` is called about once a second.
    public func run(_ engine: ReplayEngine<EpollReplayDriver>, progress: (ReplayEngine<EpollReplayDriver>) -> Void) {
        engine.io = self
        var lastProgressUs = MonotonicClock.nowMicros()
        while !engine.isDone {
            var nowUs = MonotonicClock.nowMicros()
            engine.startDue(nowUs: nowUs)
            deliver(engine)
            if engine.isDone { break }
            let waitUs = ready.isEmpty ? min(engine.nextDueUs(nowUs: nowUs) ?? 10_000, 10_000) : 0
            let count = poller.wait(timeoutNanos: UInt64(max(waitUs, 50)) * 1000)
            for index in 0..<count {
                let event = poller.event(at: index)
                let slot = Int(event.token)
                guard slot < pending.count, pending[slot].fd >= 0 else { continue }
                if pending[slot].connecting, event.flags & (EpollFlag.writable | EpollFlag.error | EpollFlag.hangUp) != 0 {
                    pending[slot].connecting = false
                    connectsInProgress -= 1
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    _ = getsockopt(pending[slot].fd, SOL_SOCKET, SO_ERROR, &error, &length)
                    ready.append((.connect, slot, -error))
                }
                if event.flags & (EpollFlag.readable | EpollFlag.error | EpollFlag.hangUp | EpollFlag.peerShutdown) != 0 { tryReceive(slot) }
                if event.flags & (EpollFlag.writable | EpollFlag.error | EpollFlag.hangUp) != 0 { trySend(slot) }
            }
            nowUs = MonotonicClock.nowMicros()
            if connectsInProgress > 0 { expireConnects(nowUs: nowUs) }
            deliver(engine)
            nowUs = MonotonicClock.nowMicros()
            engine.tick(nowUs: nowUs)
            deliver(engine)
            if nowUs - lastProgressUs >= 1_000_000 {
                lastProgressUs = nowUs
                progress(engine)
            }
        }
    }

    /// Connects waiting past the timeout (a target that drops SYNs) fail.
    private func expireConnects(nowUs: UInt64) {
        for slot in pending.indices where pending[slot].connecting
            && nowUs >= pending[slot].connectStartUs && nowUs - pending[slot].connectStartUs >= connectTimeoutUs {
            pending[slot].connecting = false
            connectsInProgress -= 1
            ready.append((.connect, slot, -ETIMEDOUT))
        }
    }

    private func deliver(_ engine: ReplayEngine<EpollReplayDriver>) {
        while !ready.isEmpty {
            let batch = ready
            ready.removeAll(keepingCapacity: true)
            let nowUs = MonotonicClock.nowMicros()
            for (kind, slot, result) in batch {
                switch kind {
                case .connect: engine.connected(slot: slot, result: result, nowUs: nowUs)
                case .send: engine.sent(slot: slot, result: result, nowUs: nowUs)
                case .receive: engine.received(slot: slot, result: result, nowUs: nowUs)
                }
            }
        }
    }
}
