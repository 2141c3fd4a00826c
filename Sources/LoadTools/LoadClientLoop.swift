import Glibc
import Platform
import Synchronization

/// One LoadClient run on epoll (the fallback where io_uring is missing or
/// forbidden, and `--backend epoll`): every connection, the histogram and the
/// counters, on one thread.
final class LoadClientLoop {
    static let receiveBufferBytesMax = 64 * 1024
    private static let wakeupToken = UInt64.max

    private let target: SocketAddress
    private let durationNanos: UInt64
    private let schedule: LoadRequestSchedule
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
        schedule = LoadRequestSchedule(connections: count, requestsPerSecond: requestsPerSecond)
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
        var clock = LoadRunClock(durationNanos: durationNanos)

        tally.connectionsLive = connections.count
        for connection in connections {
            open(connection)
        }

        var nowNanos = MonotonicClock.nowNanos()
        while tally.connectionsLive > 0, !control.stopRequested.load(ordering: .acquiring) {
            nowNanos = MonotonicClock.nowNanos()
            guard var waitNanos = clock.turn(nowNanos: nowNanos, tally: tally, onSecond: onSecond) else { break }
            let count: Int
            if schedule.intervalNanos > 0 {
                // Open loop: the requests that are due go now.
                let nextNanos = schedule.startDue(connections, nowNanos: nowNanos) { startRequest($0, nowNanos: $1) }
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
        let (elapsedNanos, cpuNanos) = clock.finish()
        ClientConnection.closeAll(connections)
        return tally.result(
            elapsedNanos: elapsedNanos, cpuNanos: cpuNanos, connectionsRequested: connections.count,
            messageSizeBytes: message.sizeBytes, requestsPerSecondAsked: schedule.requestsPerSecondAsked,
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
        let startsNow = schedule.connected(connection, messageSizeBytes: message.sizeBytes, tally: &tally)
        let nowNanos = MonotonicClock.nowNanos()
        guard !startsNow else {
            startRequest(connection, nowNanos: nowNanos)
            return
        }
        setWritableInterest(connection, false)
        schedule.scheduleFirst(connection, nowNanos: nowNanos)
    }

    // MARK: Requests

    private func startRequest(_ connection: ClientConnection, nowNanos: UInt64) {
        schedule.begin(connection, message, nowNanos: nowNanos)
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
        if let startNanos = schedule.completed(connection, tally: &tally) {
            startRequest(connection, nowNanos: startNanos)
        }
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
        schedule.failed(connection, tally: &tally)
        if connection.state != .closed { close(connection.fd) }
        connection.state = .closed
        recordFailure(connection, reason)
    }

    private func recordFailure(_ connection: ClientConnection, _ reason: String) {
        tally.recordFailure(connection: connection.index, reason)
    }
}
