import Glibc
import Platform

/// One HostileClient run: every connection, on one thread and one epoll set.
///
/// Interest sets by mode, once open (epoll always adds EPOLLERR and EPOLLHUP):
/// - stall: EPOLLOUT while the request goes out, and EPOLLRDHUP to see the end; never EPOLLIN.
/// - slow-read: the same; the reads are turns from the TurnQueue, never from epoll.
/// - slowloris: EPOLLIN (it reads what comes back) and EPOLLRDHUP; the bytes are turns.
final class HostileClientLoop {
    static let tickNanos: UInt64 = 1_000_000_000
    private static let wakeupToken = UInt64.max

    private let plan: HostilePlan
    private let target: SocketAddress
    private let durationNanos: UInt64
    private let turnIntervalNanos: UInt64
    private let control: LoadClientControl
    private let poller: EpollPoller
    private let connections: [HostileConnection]
    private var turns: TurnQueue
    private let request: UnsafeMutableRawBufferPointer
    private let receiveBuffer: UnsafeMutableRawBufferPointer

    private var result: HostileResult
    private var nextToConnect = 0
    private var connecting = 0
    private var open = 0

    init(plan: HostilePlan, target: SocketAddress, control: LoadClientControl) throws(SystemCallError) {
        self.plan = plan
        self.target = target
        self.control = control
        durationNanos = UInt64(min(plan.durationSeconds, 1e9) * 1e9)
        turnIntervalNanos = plan.turnIntervalNanos
        poller = try EpollPoller()
        try poller.add(control.wakeup.fd, flags: EpollFlag.readable, token: Self.wakeupToken)
        connections = (0..<plan.connections).map(HostileConnection.init)
        turns = TurnQueue(capacity: plan.connections)
        request = .allocate(byteCount: plan.mode.sendsRequest ? plan.requestBytes : 1, alignment: 64)
        HostileRequest.fill(request)
        receiveBuffer = .allocate(byteCount: max(plan.readChunkBytes, 64 * 1024), alignment: 64)
        result = HostileResult(mode: plan.mode, connectionsRequested: plan.connections)
    }

    deinit {
        for connection in connections where connection.state == .connecting || connection.state == .open {
            close(connection.fd)
        }
        request.deallocate()
        receiveBuffer.deallocate()
    }

    func run(onSecond: (HostileProgress) -> Void) -> HostileResult {
        let startNanos = MonotonicClock.nowNanos()
        let deadlineNanos = startNanos &+ durationNanos
        var tickNanos = startNanos + Self.tickNanos
        startConnects()

        while !control.stopRequested.load(ordering: .acquiring) {
            let nowNanos = MonotonicClock.nowNanos()
            if nowNanos >= tickNanos {
                onSecond(progress(elapsedNanos: nowNanos - startNanos))
                while tickNanos <= nowNanos { tickNanos += Self.tickNanos }
            }
            if nowNanos >= deadlineNanos { break }
            while let index = turns.popDue(nowNanos: nowNanos) {
                takeTurn(connections[index], nowNanos: nowNanos)
            }
            var wakeNanos = min(tickNanos, deadlineNanos)
            if let due = turns.nextDueNanos { wakeNanos = min(wakeNanos, due) }
            let waitMs = wakeNanos > nowNanos ? Int32(min((wakeNanos - nowNanos + 999_999) / 1_000_000, 1000)) : 0
            let count = poller.wait(timeoutMs: waitMs)
            for eventIndex in 0..<count {
                let event = poller.event(at: eventIndex)
                if event.token == Self.wakeupToken {
                    control.wakeup.drain()
                } else {
                    handle(event.flags, connections[Int(event.token)])
                }
            }
            startConnects()
        }

        result.durationSeconds = Double(MonotonicClock.nowNanos() - startNanos) / 1e9
        for connection in connections {
            switch connection.state {
            case .open: result.connectionsOpenAtEnd += 1
            case .connecting: result.connectionsConnectingAtEnd += 1
            case .waiting, .closed: continue
            }
            close(connection.fd)
            connection.state = .closed
        }
        return result
    }

    private func progress(elapsedNanos: UInt64) -> HostileProgress {
        HostileProgress(
            elapsedSeconds: Double(elapsedNanos) / 1e9, connectionsOpen: open, connectionsConnecting: connecting,
            connectionsWaiting: connections.count - nextToConnect, connectionsEnded: result.connectionsEnded,
            requestsSent: result.requestsSent, bytesSent: result.bytesSent, bytesReceived: result.bytesReceived)
    }

    // MARK: Connecting

    private func startConnects() {
        while connecting < plan.connectsInFlightMax, nextToConnect < connections.count {
            let connection = connections[nextToConnect]
            nextToConnect += 1
            startConnect(connection)
        }
    }

    private func startConnect(_ connection: HostileConnection) {
        let fd: Int32
        let connected: Bool
        do throws(SystemCallError) {
            (fd, connected) = try SocketCalls.startConnect(to: target, noDelay: true,
                                                           receiveBufferBytes: plan.receiveBufferBytes)
        } catch {
            connection.state = .closed
            countConnectFailure(connection, error.errorNumber, "\(error)")
            return
        }
        connection.fd = fd
        connection.state = .connecting
        connecting += 1
        if connected {
            becameOpen(connection)
            return
        }
        setInterest(connection, EpollFlag.writable)
    }

    private func handle(_ flags: UInt32, _ connection: HostileConnection) {
        switch connection.state {
        case .waiting, .closed:
            return
        case .connecting:
            guard flags & (EpollFlag.writable | EpollFlag.error | EpollFlag.hangUp) != 0 else { return }
            let failure = SocketCalls.pendingError(connection.fd)
            if failure == 0 {
                becameOpen(connection)
            } else {
                connecting -= 1
                close(connection.fd)
                connection.state = .closed
                countConnectFailure(connection, failure, "connect \(target): \(errorDescription(failure))")
            }
        case .open:
            handleOpen(flags, connection)
        }
    }

    private func becameOpen(_ connection: HostileConnection) {
        connecting -= 1
        open += 1
        connection.state = .open
        result.connectionsOpened += 1
        let nowNanos = MonotonicClock.nowNanos()
        switch plan.mode {
        case .stall, .slowRead:
            setInterest(connection, EpollFlag.writable | EpollFlag.peerShutdown)
            if connection.state == .open { sendRequest(connection) }
            if plan.mode == .slowRead, connection.state == .open {
                turns.push(index: connection.index, dueNanos: nowNanos + turnIntervalNanos)
            }
        case .slowloris:
            setInterest(connection, EpollFlag.readable | EpollFlag.peerShutdown)
            if connection.state == .open { trickle(connection) }
            if connection.state == .open {
                turns.push(index: connection.index, dueNanos: nowNanos + turnIntervalNanos)
            }
        }
    }

    private func countConnectFailure(_ connection: HostileConnection, _ errorNumber: Int32, _ reason: String) {
        if errorNumber == ECONNREFUSED {
            result.connectionsRefused += 1
        } else {
            result.connectFailures += 1
        }
        noteFirstError(connection, reason)
    }

    // MARK: Open connections

    private func handleOpen(_ flags: UInt32, _ connection: HostileConnection) {
        if flags & (EpollFlag.error | EpollFlag.hangUp) != 0 {
            // A reset, or both directions shut. Whatever data is left unread stays so.
            let failure = SocketCalls.pendingError(connection.fd)
            end(connection, errorNumber: failure, failure == 0 ? "closed by the peer" : errorDescription(failure))
            return
        }
        if flags & EpollFlag.readable != 0 {
            receiveAll(connection)  // slowloris only
            if connection.state != .open { return }
        }
        if flags & EpollFlag.peerShutdown != 0 {
            switch plan.mode {
            case .stall:
                end(connection, errorNumber: 0, "closed by the peer")
                return
            case .slowRead:
                // The slow reads reach the FIN in their own time; stop being told of it.
                connection.peerFinished = true
                setInterest(connection, connection.interest & ~EpollFlag.peerShutdown)
            case .slowloris:
                break  // receiveAll saw the EOF
            }
        }
        if connection.state == .open, flags & EpollFlag.writable != 0, connection.interest & EpollFlag.writable != 0 {
            sendRequest(connection)
        }
    }

    /// stall and slow-read: sends as much of the request as the socket takes.
    private func sendRequest(_ connection: HostileConnection) {
        while connection.sentBytes < request.count {
            let count = send(connection.fd, request.baseAddress! + connection.sentBytes,
                             request.count - connection.sentBytes, Int32(MSG_NOSIGNAL))
            if count > 0 {
                connection.sentBytes += count
                result.bytesSent &+= UInt64(count)
                continue
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure == EAGAIN { return }  // EPOLLOUT is in the interest set until the request is out
            end(connection, errorNumber: failure, "send: \(errorDescription(failure))")
            return
        }
        result.requestsSent += 1
        setInterest(connection, connection.interest & ~EpollFlag.writable)
    }

    /// A turn: slow-read reads one chunk, slowloris sends one byte; then the next turn.
    private func takeTurn(_ connection: HostileConnection, nowNanos: UInt64) {
        guard connection.state == .open else { return }
        switch plan.mode {
        case .stall:
            return
        case .slowRead:
            readChunk(connection)
        case .slowloris:
            trickle(connection)
        }
        if connection.state == .open {
            turns.push(index: connection.index, dueNanos: nowNanos + turnIntervalNanos)
        }
    }

    private func readChunk(_ connection: HostileConnection) {
        while true {
            let count = recv(connection.fd, receiveBuffer.baseAddress, plan.readChunkBytes, 0)
            if count > 0 {
                result.bytesReceived &+= UInt64(count)
                connection.receivedBytes += count
                if connection.receivedBytes >= request.count, connection.sentBytes == request.count {
                    // The whole reply is read: ask again, so the download never ends and
                    // the load stays the same for the whole run.
                    connection.receivedBytes -= request.count
                    connection.sentBytes = 0
                    setInterest(connection, connection.interest | EpollFlag.writable)
                    if connection.state == .open { sendRequest(connection) }
                }
                return
            }
            if count == 0 {
                end(connection, errorNumber: 0, "closed by the peer")
                return
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure != EAGAIN { end(connection, errorNumber: failure, "recv: \(errorDescription(failure))") }
            return
        }
    }

    /// slowloris: one byte of the pattern, never '\n'. A full send buffer skips the
    /// byte instead of queueing it: the point is the pace, not the bytes.
    private func trickle(_ connection: HostileConnection) {
        var byte = HostileRequest.patternByte(at: connection.sentBytes)
        while true {
            let count = send(connection.fd, &byte, 1, Int32(MSG_NOSIGNAL))
            if count == 1 {
                connection.sentBytes += 1
                result.bytesSent &+= 1
                return
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure != EAGAIN { end(connection, errorNumber: failure, "send: \(errorDescription(failure))") }
            return
        }
    }

    /// slowloris: reads everything that arrived (an echo of the trickle).
    private func receiveAll(_ connection: HostileConnection) {
        while true {
            let count = recv(connection.fd, receiveBuffer.baseAddress, receiveBuffer.count, 0)
            if count > 0 {
                result.bytesReceived &+= UInt64(count)
                if count < receiveBuffer.count { return }
                continue
            }
            if count == 0 {
                end(connection, errorNumber: 0, "closed by the peer")
                return
            }
            let failure = errno
            if failure == EINTR { continue }
            if failure != EAGAIN { end(connection, errorNumber: failure, "recv: \(errorDescription(failure))") }
            return
        }
    }

    // MARK: Ends

    private func setInterest(_ connection: HostileConnection, _ flags: UInt32) {
        guard connection.state == .connecting || connection.state == .open else { return }
        do throws(SystemCallError) {
            if !connection.registered {
                try poller.add(connection.fd, flags: flags, token: UInt64(connection.index))
                connection.registered = true
            } else if flags != connection.interest {
                try poller.modify(connection.fd, flags: flags, token: UInt64(connection.index))
            }
            connection.interest = flags
        } catch {
            end(connection, errorNumber: error.errorNumber, "\(error)")
        }
    }

    /// Closes an open (or connecting) connection and counts how it ended: 0 is the
    /// peer's orderly close, any errno a reset.
    private func end(_ connection: HostileConnection, errorNumber: Int32, _ reason: String) {
        switch connection.state {
        case .open:
            open -= 1
            if errorNumber == 0 {
                result.connectionsClosedByPeer += 1
            } else {
                result.connectionsReset += 1
            }
        case .connecting:
            connecting -= 1
            result.connectFailures += 1
        case .waiting, .closed:
            return
        }
        close(connection.fd)
        connection.state = .closed
        noteFirstError(connection, reason)
    }

    private func noteFirstError(_ connection: HostileConnection, _ reason: String) {
        if result.firstErrorDescription == nil {
            result.firstErrorDescription = "connection \(connection.index): \(reason)"
        }
    }
}
