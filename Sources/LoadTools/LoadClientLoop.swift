import Glibc
import Platform
import Histogram
import Synchronization

/// One LoadClient run: every connection, the histogram and the counters, on one thread.
final class LoadClientLoop {
    static let receiveBufferBytesMax = 64 * 1024
    static let latencyNanosMax: UInt64 = 60_000_000_000
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

    // Nanoseconds, 1 ns to 60 s, 3 significant digits: sub-microsecond detail for
    // loopback round trips, about 200 KiB of buckets, allocated once.
    private var latencyNanos = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: LoadClientLoop.latencyNanosMax, numberOfSignificantValueDigits: .three)
    private var requests: UInt64 = 0
    private var errors: UInt64 = 0
    private var firstErrorDescription: String?
    private var bytesSent: UInt64 = 0
    private var bytesReceived: UInt64 = 0
    private var connectionsEstablished = 0
    private var connectionsActive = 0
    private var connectionsLive = 0  // connecting or active

    init(target: SocketAddress, connections count: Int, messageSizeBytes: Int, durationSeconds: Double,
         requestsPerSecond: Double? = nil, control: LoadClientControl) throws(SystemCallError) {
        self.target = target
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

        connectionsLive = connections.count
        for connection in connections {
            open(connection)
        }

        var nowNanos = MonotonicClock.nowNanos()
        while connectionsLive > 0, !control.stopRequested.load(ordering: .acquiring) {
            nowNanos = MonotonicClock.nowNanos()
            if nowNanos >= tickNanos {
                onSecond(LoadProgress(
                    elapsedSeconds: Double(nowNanos - startNanos) / 1e9,
                    intervalSeconds: Double(nowNanos - lastTickNanos) / 1e9,
                    intervalRequests: requests - lastTickRequests,
                    requests: requests, errors: errors, connectionsActive: connectionsActive))
                lastTickNanos = nowNanos
                lastTickRequests = requests
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
        return result(elapsedNanos: nowNanos - startNanos, cpuNanos: cpuNanos)
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
        connectionsEstablished += 1
        connectionsActive += 1
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
                bytesSent &+= UInt64(sent)
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
                bytesReceived &+= UInt64(count)
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
        latencyNanos.record(min(nowNanos - connection.requestStartNanos, Self.latencyNanosMax))
        requests += 1
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
        if connection.state == .active { connectionsActive -= 1 }
        if connection.nextRequestNanos != 0 {
            connection.nextRequestNanos = 0
            waitingCount -= 1
        }
        if connection.state != .closed { close(connection.fd) }
        connection.state = .closed
        recordFailure(connection, reason)
    }

    private func recordFailure(_ connection: ClientConnection, _ reason: String) {
        errors += 1
        connectionsLive -= 1
        if firstErrorDescription == nil {
            firstErrorDescription = "connection \(connection.index): \(reason)"
        }
    }

    // MARK: Result

    private func result(elapsedNanos: UInt64, cpuNanos: UInt64) -> LoadResult {
        func micros(_ nanos: UInt64) -> Double { Double(nanos) / 1000 }
        let empty = latencyNanos.totalCount == 0
        return LoadResult(
            requests: requests,
            durationSeconds: Double(elapsedNanos) / 1e9,
            latencyP50Micros: micros(latencyNanos.valueAtPercentile(50)),
            latencyP90Micros: micros(latencyNanos.valueAtPercentile(90)),
            latencyP99Micros: micros(latencyNanos.valueAtPercentile(99)),
            latencyP999Micros: micros(latencyNanos.valueAtPercentile(99.9)),
            latencyP9999Micros: micros(latencyNanos.valueAtPercentile(99.99)),
            latencyMaxMicros: empty ? 0 : micros(latencyNanos.max),
            latencyMeanMicros: empty ? 0 : latencyNanos.mean / 1000,
            errors: errors,
            firstErrorDescription: firstErrorDescription,
            connectionsRequested: connections.count,
            connectionsEstablished: connectionsEstablished,
            messageSizeBytes: message.sizeBytes,
            bytesSent: bytesSent,
            bytesReceived: bytesReceived,
            clientCPUSeconds: Double(cpuNanos) / 1e9,
            requestsPerSecondAsked: intervalNanos > 0 ? 1e9 * Double(connections.count) / Double(intervalNanos) : 0)
    }
}
