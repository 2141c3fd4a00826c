import CLinuxSystem
import Glibc
import Platform
import Synchronization

/// The event loop of one TestServer: its thread's only state, never touched elsewhere.
final class TestServerLoop {
    static let readBufferBytes = 64 * 1024
    /// Reads per readiness event before moving on to other connections (fairness).
    static let readsPerEventMax = 16
    static let acceptsPerEventMax = 64
    /// After an accept failure such as EMFILE the level-triggered listener would report
    /// ready again at once; pausing it avoids a busy loop until descriptors free up.
    static let listenerPauseNanos: UInt64 = 100_000_000

    private static let listenerToken = UInt64.max
    private static let wakeupToken = UInt64.max - 1

    let boundAddress: SocketAddress
    let wakeup: WakeupEvent
    private let mode: TestServerMode
    private let shared: TestServerShared
    private let computesDigests: Bool
    private let poller: EpollPoller
    private let listenerFd: Int32
    private let blackholeFillerFds: [Int32]
    private let readBuffer: UnsafeMutableRawBufferPointer

    /// Indexed by fd: descriptors are small integers, so a lookup is one array access.
    private var connections: [ServerConnection?] = []
    private var generation: UInt32 = 0
    private var closedRecordsRetained = 0
    private var listenerResumeAtNanos: UInt64?
    private var descriptorsClosed = false

    /// Takes ownership of `listenerFd` (closed here on failure). The blackhole mode
    /// fills the listener's queue now, so start() returns with it in force.
    init(mode: TestServerMode, shared: TestServerShared, listenerFd: Int32) throws(SystemCallError) {
        var fillers: [Int32] = []
        do throws(SystemCallError) {
            boundAddress = try SocketAddress(boundTo: listenerFd)
            if mode == .blackhole {
                fillers = try BlackholeQueueFiller.fill(listenerFd: listenerFd, connectingTo: boundAddress.replacingWildcardWithLoopback)
            }
            poller = try EpollPoller()
            wakeup = try WakeupEvent()
        } catch {
            close(listenerFd)
            fillers.forEach { close($0) }
            throw error
        }
        self.mode = mode
        self.shared = shared
        computesDigests = shared.computesDigests
        self.listenerFd = listenerFd
        blackholeFillerFds = fillers
        readBuffer = .allocate(byteCount: mode == .echo || mode == .sink ? Self.readBufferBytes : 0, alignment: 16)
        // From here deinit releases everything if registering fails.
        if mode != .blackhole {
            try poller.add(listenerFd, flags: EpollFlag.readable, token: Self.listenerToken)
        }
        try poller.add(wakeup.fd, flags: EpollFlag.readable, token: Self.wakeupToken)
    }

    deinit {
        closeDescriptors()
        readBuffer.deallocate()
    }

    func run() {
        while !shared.stopRequested.load(ordering: .acquiring) {
            let count = poller.wait(timeoutMs: waitTimeoutMs())
            for index in 0..<count {
                let event = poller.event(at: index)
                switch event.token {
                case Self.wakeupToken: wakeup.drain()
                case Self.listenerToken: acceptConnections()
                default: handle(event)
                }
            }
            resumeListenerIfDue()
        }
        closeDescriptors()
    }

    // MARK: Accepting

    private func acceptConnections() {
        for _ in 0..<Self.acceptsPerEventMax {
            let fd = accept4(listenerFd, nil, nil, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            if fd >= 0 {
                adopt(fd)
                continue
            }
            switch errno {
            case EAGAIN:
                return
            case EINTR, ECONNABORTED:
                continue
            default:
                shared.acceptFailures.addFromOwner(1)
                pauseListener()
                return
            }
        }
    }

    private func adopt(_ fd: Int32) {
        try? SocketCalls.setNoDelay(fd)
        generation &+= 1
        let token = UInt64(generation) << 32 | UInt64(UInt32(bitPattern: fd))
        // A stalled connection is never read, but the peer's FIN is still worth recording.
        let flags = mode == .stall ? EpollFlag.peerShutdown : EpollFlag.readable
        do {
            try poller.add(fd, flags: flags, token: token)
        } catch {
            close(fd)
            shared.acceptFailures.addFromOwner(1)
            return
        }
        let record = ConnectionRecordCell(acceptIndex: shared.connectionsAccepted.load(ordering: .relaxed),
                                          hasDigest: computesDigests)
        shared.append(record)
        shared.connectionsAccepted.addFromOwner(1)
        shared.connectionsOpen.addFromOwner(1)
        let index = Int(fd)
        if index >= connections.count {
            connections.append(contentsOf: repeatElement(nil, count: max(index + 1 - connections.count, connections.count)))
        }
        connections[index] = ServerConnection(fd: fd, token: token, record: record, interestFlags: flags)
    }

    private func pauseListener() {
        guard listenerResumeAtNanos == nil else { return }
        try? poller.modify(listenerFd, flags: 0, token: Self.listenerToken)
        listenerResumeAtNanos = MonotonicClock.nowNanos() + Self.listenerPauseNanos
    }

    private func resumeListenerIfDue() {
        guard let resumeAt = listenerResumeAtNanos, MonotonicClock.nowNanos() >= resumeAt else { return }
        try? poller.modify(listenerFd, flags: EpollFlag.readable, token: Self.listenerToken)
        listenerResumeAtNanos = nil
    }

    private func waitTimeoutMs() -> Int32 {
        guard let resumeAt = listenerResumeAtNanos else { return -1 }
        let now = MonotonicClock.nowNanos()
        return resumeAt > now ? Int32((resumeAt - now + 999_999) / 1_000_000) : 0
    }

    // MARK: Connection events

    private func handle(_ event: EpollPoller.Event) {
        let index = Int(event.token & 0xffff_ffff)
        guard index < connections.count, let connection = connections[index], connection.token == event.token else {
            return  // the connection closed earlier in this batch
        }
        switch mode {
        case .echo, .sink:
            if connection.hasPendingOutput, event.flags & (EpollFlag.writable | EpollFlag.error | EpollFlag.hangUp) != 0 {
                guard writePendingOutput(connection) else { return }
            }
            if !connection.hasPendingOutput, event.flags & (EpollFlag.readable | EpollFlag.error | EpollFlag.hangUp) != 0 {
                guard receive(connection) else { return }
            }
            connection.publish()
        case .stall:
            if event.flags & (EpollFlag.error | EpollFlag.hangUp) != 0 {
                connection.peerClosed = true
                finish(connection, reset: event.flags & EpollFlag.error != 0 || SocketCalls.pendingError(connection.fd) != 0)
            } else if event.flags & EpollFlag.peerShutdown != 0 {
                connection.peerClosed = true
                // Still open, as a stalled peer would be; only errors are reported from now on.
                setInterest(connection, 0)
                connection.publish()
            }
        case .blackhole:
            break
        }
    }

    /// Reads what is there (up to `readsPerEventMax` buffers). Returns false when the
    /// connection was closed.
    private func receive(_ connection: ServerConnection) -> Bool {
        for _ in 0..<Self.readsPerEventMax {
            let count = recv(connection.fd, readBuffer.baseAddress, readBuffer.count, 0)
            if count > 0 {
                let bytes = UnsafeRawBufferPointer(rebasing: readBuffer[..<count])
                let lines = computesDigests ? connection.digest.updateCountingNewlines(bytes) : NewlineCount.count(in: bytes)
                connection.bytesReceived &+= UInt64(count)
                shared.totalBytesReceived.addFromOwner(UInt64(count))
                shared.totalLinesReceived.addFromOwner(lines)
                if mode == .echo {
                    guard echo(bytes, on: connection) else { return connection.isOpen }
                }
                if count < readBuffer.count { return true }  // drained; a further read would be EAGAIN
                continue
            }
            if count == 0 {
                // EOF: nothing is pending (reading stops while a reply is pending), so close now.
                connection.peerClosed = true
                finish(connection, reset: false)
                return false
            }
            switch errno {
            case EAGAIN: return true
            case EINTR: continue
            default:
                finish(connection, reset: true)
                return false
            }
        }
        return true
    }

    /// Writes `bytes` back. Returns true when all were written; otherwise keeps the rest,
    /// stops reading until it is written, and returns false (also when it closed).
    private func echo(_ bytes: UnsafeRawBufferPointer, on connection: ServerConnection) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = send(connection.fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if sent > 0 {
                offset += sent
                connection.bytesSent &+= UInt64(sent)
                shared.totalBytesSent.addFromOwner(UInt64(sent))
                continue
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure == EAGAIN { break }
            finish(connection, reset: true)
            return false
        }
        if offset == bytes.count { return true }
        connection.storePendingOutput(UnsafeRawBufferPointer(rebasing: bytes[offset...]), capacityBytes: readBuffer.count)
        setInterest(connection, EpollFlag.writable)
        return false
    }

    /// Returns false when the connection was closed.
    private func writePendingOutput(_ connection: ServerConnection) -> Bool {
        while connection.hasPendingOutput {
            let pending = connection.pendingOutput
            let sent = send(connection.fd, pending.baseAddress, pending.count, Int32(MSG_NOSIGNAL))
            if sent > 0 {
                connection.consumePendingOutput(sent)
                connection.bytesSent &+= UInt64(sent)
                shared.totalBytesSent.addFromOwner(UInt64(sent))
                continue
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure == EAGAIN {
                connection.publish()
                return true
            }
            finish(connection, reset: true)
            return false
        }
        return setInterest(connection, EpollFlag.readable)
    }

    /// Returns false when the connection had to be closed.
    @discardableResult
    private func setInterest(_ connection: ServerConnection, _ flags: UInt32) -> Bool {
        guard connection.interestFlags != flags else { return true }
        do {
            try poller.modify(connection.fd, flags: flags, token: connection.token)
        } catch {
            finish(connection, reset: true)
            return false
        }
        connection.interestFlags = flags
        return true
    }

    private func finish(_ connection: ServerConnection, reset: Bool) {
        if reset {
            connection.wasReset = true
            connection.peerClosed = true
        }
        close(connection.fd)  // also leaves the epoll set: the fd is never duplicated
        connections[Int(connection.fd)] = nil
        connection.isOpen = false
        connection.publish()
        shared.connectionsOpen.addFromOwner(-1)

        closedRecordsRetained += 1
        let retainedMax = shared.retainedClosedRecordsMax
        if closedRecordsRetained >= retainedMax + retainedMax / 2 + 1 {
            shared.dropOldestClosedRecords(count: closedRecordsRetained - retainedMax)
            closedRecordsRetained = retainedMax
        }
    }

    // MARK: Teardown

    private func closeDescriptors() {
        guard !descriptorsClosed else { return }
        descriptorsClosed = true
        for case let connection? in connections {
            close(connection.fd)
            connection.isOpen = false
            connection.publish()
            shared.connectionsOpen.addFromOwner(-1)
        }
        connections.removeAll()
        close(listenerFd)
        blackholeFillerFds.forEach { close($0) }
        wakeup.close()
        // The epoll descriptor closes when the poller is released with this loop.
    }
}
