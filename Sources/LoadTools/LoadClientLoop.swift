import Glibc
import Platform
import Synchronization

/// One LoadClient run on epoll (the fallback where io_uring is missing or
/// forbidden, and `--backend epoll`): every connection, the histogram and the
/// counters, on one thread.
final class LoadClientLoop {
    static let receiveBufferBytesMax = 64 * 1024
    static let tickNanos: UInt64 = 1_000_000_000
    private static let wakeupToken = UInt64.max

    private let target: SocketAddress
    private let durationNanos: UInt64
    /// Open loop (`--rate`): nanoseconds between one connection's requests;
    /// 0: closed loop, each request sent as the previous reply arrives.
    private let intervalNanos: UInt64
    /// Open loop: connections whose next request waits for its time.
    private var waitingCount = 0
    private let control: LoadClientControl
    private let poller: EpollPoller
    private let message: LoadMessage
    private var connections: [ClientConnection]
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private let ioVectors: UnsafeMutablePointer<iovec>

    private var tally = LoadClientTally()
    /// "epoll", and why when io_uring was wanted and could not be had.
    private let backendDescription: String

    init(target: SocketAddress, connections count: Int, messageSizeBytes: Int, durationSeconds: Double,
         requestsPerSecond: Double? = nil, control: LoadClientControl, backendDescription: String = "epoll")
        throws(SystemCallError) {
        self.target = target
        self.backendDescription = backendDescription
        durationNanos = UInt64(min(durationSeconds, 1e9) * 1e9)
        intervalNanos = requestsPerSecond.map { UInt64(max(1, (1e9 * Double(count) / $0).rounded())) } ?? 0
        self.control = control
        poller = try EpollPoller()
        try poller.add(control.wakeup.fd, flags: EpollFlag.readable, token: Self.wakeupToken)
        message = LoadMessage(sizeBytes: messageSizeBytes, connections: count)
        connections = (0..<count).map(ClientConnection.init)
        receiveBuffer = .allocate(byteCount: min(messageSizeBytes, Self.receiveBufferBytesMax), alignment: 64)
        ioVectors = .allocate(capacity: 2)
    }

    deinit {
        for connection in connections where connection.state != .closed {
            close(connection.fd)
        }
        receiveBuffer.deallocate()
        ioVectors.deallocate()
    }

    func run(onSecond: (LoadProgress) -> Void) -> LoadResult {
        let cpuStartNanos = MonotonicClock.threadCPUNanos()
        let startNanos = MonotonicClock.nowNanos()
        let deadlineNanos = startNanos &+ durationNanos
        var tickNanos = startNanos + Self.tickNanos
        var lastTickNanos = startNanos
        var lastTickRequests: UInt64 = 0

        tally.connectionsLive = connections.count
        for connection in connections {
            open(connection)
        }

        var nowNanos = MonotonicClock.nowNanos()
        while tally.connectionsLive > 0, !control.stopRequested.load(ordering: .acquiring) {
            nowNanos = MonotonicClock.nowNanos()
            if nowNanos >= tickNanos {
                onSecond(tally.progress(elapsedNanos: nowNanos - startNanos, intervalNanos: nowNanos - lastTickNanos,
                                        intervalRequests: tally.requests - lastTickRequests))
                lastTickNanos = nowNanos
                lastTickRequests = tally.requests
                while tickNanos <= nowNanos { tickNanos += Self.tickNanos }
            }
            if nowNanos >= deadlineNanos { break }
            var waitNanos = min(tickNanos, deadlineNanos) - nowNanos
            let count: Int
            if intervalNanos > 0 {
                let nextNanos = sendDueRequests(nowNanos: nowNanos)
                waitNanos = min(waitNanos, nextNanos > nowNanos ? nextNanos - nowNanos : 0)
                count = poller.wait(timeoutNanos: waitNanos)
            } else {
                count = poller.wait(timeoutMs: Int32(min((waitNanos + 999_999) / 1_000_000, 1000)))
            }
            for index in 0..<count {
                let event = poller.event(at: index)
                if event.token == Self.wakeupToken {
                    control.wakeup.drain()
                } else {
                    handle(event.flags, connections[Int(event.token)])
                }
            }
        }
        nowNanos = MonotonicClock.nowNanos()
        let cpuNanos = MonotonicClock.threadCPUNanos() - cpuStartNanos
        for connection in connections where connection.state != .closed {
            close(connection.fd)
            connection.state = .closed
        }
        return tally.result(
            elapsedNanos: nowNanos - startNanos, cpuNanos: cpuNanos, connectionsRequested: connections.count,
            messageSizeBytes: message.sizeBytes,
            requestsPerSecondAsked: intervalNanos > 0 ? 1e9 * Double(connections.count) / Double(intervalNanos) : 0,
            backend: backendDescription)
    }

    // MARK: Connections

    private func open(_ connection: ClientConnection) {
        let fd: Int32
        let connected: Bool
        do {
            (fd, connected) = try SocketCalls.startConnect(to: target, noDelay: true)
        } catch {
            connection.state = .closed
            recordFailure(connection, "\(error)")
            return
        }
        connection.fd = fd
        connection.wantsWritable = !connected
        do {
            try poller.add(fd, flags: EpollFlag.readable | (connected ? 0 : EpollFlag.writable), token: UInt64(connection.index))
        } catch {
            fail(connection, "\(error)")
            return
        }
        if connected { becameConnected(connection) }
    }

    private func handle(_ flags: UInt32, _ connection: ClientConnection) {
        switch connection.state {
        case .closed:
            return
        case .connecting:
            guard flags & (EpollFlag.writable | EpollFlag.error | EpollFlag.hangUp) != 0 else { return }
            let failure = SocketCalls.pendingError(connection.fd)
            if failure != 0 {
                fail(connection, "connect \(target): \(errorDescription(failure))")
            } else {
                becameConnected(connection)
            }
        case .active:
            if flags & (EpollFlag.readable | EpollFlag.error | EpollFlag.hangUp) != 0 {
                receive(connection)
            }
            if connection.state == .active, connection.wantsWritable,
               flags & (EpollFlag.writable | EpollFlag.error | EpollFlag.hangUp) != 0 {
                send(connection)
            }
        }
    }

    private func becameConnected(_ connection: ClientConnection) {
        connection.state = .active
        tally.connectionsEstablished += 1
        tally.connectionsActive += 1
        let nowNanos = MonotonicClock.nowNanos()
        guard intervalNanos > 0 else {
            startRequest(connection, nowNanos: nowNanos)
            return
        }
        // Open loop: nothing to send or receive until the first request is
        // due; the connections' schedules are spread evenly over one interval.
        connection.sendOffset = message.sizeBytes
        connection.receiveOffset = message.sizeBytes
        setWritableInterest(connection, false)
        scheduleRequest(connection, atNanos: nowNanos &+ intervalNanos * UInt64(connection.index) / UInt64(connections.count))
    }

    // MARK: Open loop

    /// Requests are due at fixed times, whatever the replies do, and each
    /// latency counts from its request's due time, not from when it could be
    /// sent: a reply that comes late delays the requests behind it on its
    /// connection, and their latencies include that wait (wrk2's correction
    /// of coordinated omission).
    private func scheduleRequest(_ connection: ClientConnection, atNanos dueNanos: UInt64) {
        connection.nextRequestNanos = dueNanos
        waitingCount += 1
    }

    /// Sends the requests that are due; returns when the next one is (UInt64.max: none waits).
    private func sendDueRequests(nowNanos: UInt64) -> UInt64 {
        guard waitingCount > 0 else { return .max }
        var nextNanos = UInt64.max
        for connection in connections where connection.nextRequestNanos != 0 && connection.state == .active {
            let dueNanos = connection.nextRequestNanos
            if dueNanos <= nowNanos {
                connection.nextRequestNanos = 0
                waitingCount -= 1
                startRequest(connection, nowNanos: dueNanos)
            } else {
                nextNanos = min(nextNanos, dueNanos)
            }
        }
        return nextNanos
    }

    // MARK: Requests

    private func startRequest(_ connection: ClientConnection, nowNanos: UInt64) {
        connection.sequence &+= 1
        message.setSequence(connection.sequence, connection: connection.index)
        connection.sendOffset = 0
        connection.receiveOffset = 0
        connection.requestStartNanos = nowNanos
        send(connection)
    }

    private func send(_ connection: ClientConnection) {
        var header = msghdr()
        header.msg_iov = ioVectors
        while connection.sendOffset < message.sizeBytes {
            header.msg_iovlen = message.fillIOVectors(ioVectors, connection: connection.index, offset: connection.sendOffset)
            let sent = sendmsg(connection.fd, &header, Int32(MSG_NOSIGNAL))
            if sent > 0 {
                connection.sendOffset += sent
                tally.bytesSent &+= UInt64(sent)
                continue
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure == EAGAIN {
                setWritableInterest(connection, true)
                return
            }
            fail(connection, "send: \(errorDescription(failure))")
            return
        }
        setWritableInterest(connection, false)
    }

    private func receive(_ connection: ClientConnection) {
        guard connection.receiveOffset < message.sizeBytes else {
            // Open loop, between requests: an echo has nothing to say now.
            fail(connection, "bytes or EOF arrived with no request in flight")
            return
        }
        while true {
            let wanted = min(message.sizeBytes - connection.receiveOffset, receiveBuffer.count)
            let count = recv(connection.fd, receiveBuffer.baseAddress, wanted, 0)
            if count > 0 {
                let bytes = UnsafeRawBufferPointer(rebasing: receiveBuffer[..<count])
                if let index = message.firstMismatch(in: bytes, atOffset: connection.receiveOffset, connection: connection.index) {
                    fail(connection, "response byte \(connection.receiveOffset + index) of request \(connection.sequence) differs from the request")
                    return
                }
                connection.receiveOffset += count
                tally.bytesReceived &+= UInt64(count)
                if connection.receiveOffset == message.sizeBytes {
                    completeRequest(connection)
                    return
                }
                if count < wanted { return }  // drained; epoll reports the rest
                continue
            }
            if count == 0 {
                fail(connection, connection.receiveOffset == 0
                    ? "closed by the peer"
                    : "closed by the peer after \(connection.receiveOffset) of \(message.sizeBytes) response bytes")
                return
            }
            let failure = errno
            switch failure {
            case EAGAIN: return
            case EINTR: continue
            default:
                fail(connection, "recv: \(errorDescription(failure))")
                return
            }
        }
    }

    private func completeRequest(_ connection: ClientConnection) {
        guard connection.sendOffset == message.sizeBytes else {
            fail(connection, "a whole response arrived before the request was sent")
            return
        }
        let nowNanos = MonotonicClock.nowNanos()
        tally.recordRequest(latencyNanos: nowNanos - connection.requestStartNanos)
        if intervalNanos > 0 {
            let dueNanos = connection.requestStartNanos &+ intervalNanos
            if dueNanos <= nowNanos {
                startRequest(connection, nowNanos: dueNanos)
            } else {
                scheduleRequest(connection, atNanos: dueNanos)
            }
            return
        }
        startRequest(connection, nowNanos: nowNanos)
    }

    private func setWritableInterest(_ connection: ClientConnection, _ wanted: Bool) {
        guard connection.wantsWritable != wanted else { return }
        do {
            try poller.modify(connection.fd, flags: EpollFlag.readable | (wanted ? EpollFlag.writable : 0),
                              token: UInt64(connection.index))
            connection.wantsWritable = wanted
        } catch {
            fail(connection, "\(error)")
        }
    }

    private func fail(_ connection: ClientConnection, _ reason: String) {
        if connection.state == .active { tally.connectionsActive -= 1 }
        if connection.nextRequestNanos != 0 {
            connection.nextRequestNanos = 0
            waitingCount -= 1
        }
        if connection.state != .closed { close(connection.fd) }
        connection.state = .closed
        recordFailure(connection, reason)
    }

    private func recordFailure(_ connection: ClientConnection, _ reason: String) {
        tally.recordFailure(connection: connection.index, reason)
    }
}
