import Glibc
import Platform
import Ring

/// One LoadClient run on io_uring, on one thread with one ring: what the epoll
/// loop does, at a lower cost per request, so that the client takes less of
/// the machine than the server or proxy it measures.
///
/// - Receives are multishot, into slots of a provided buffer ring: one SQE per
///   connection for the whole run and no recv system call. A kernel without
///   multishot recv (older than 6.0, -EINVAL) or without provided buffer rings
///   gets single-shot recvs into a buffer of each connection's own.
/// - Sends are `sendmsg` SQEs of the request's two iovecs; every send made
///   due in one turn of the loop goes out in the one `io_uring_enter` that
///   also waits for completions.
/// - Open loop (`--rate`): the wait's own timeout (`submit_and_wait_timeout`)
///   wakes the loop when the next request is due; no timer descriptor, no
///   extra system call.
/// - With `DEFER_TASKRUN` the kernel runs completions only when the loop
///   waits: no interrupt of the thread between two waits.
final class RingLoadClientLoop {
    private enum Kind: UInt8 {
        case connect = 1
        case receive
        case send
        case wakeup
        case cancel
    }

    private let target: SocketAddress
    private let durationNanos: UInt64
    private let schedule: LoadRequestSchedule
    private let control: LoadClientControl
    private let ring: Ring
    private let pool: BufferPool?
    private let buffers: ProvidedBuffers?
    /// Multishot recvs into `buffers`; false: single-shot recvs into `ownBuffers`.
    private var multishot: Bool
    private var ownBuffers: UnsafeMutableRawPointer?
    private let ownBufferBytes: Int
    private let message: LoadMessage
    private var connections: [ClientConnection]
    /// Per connection, a msghdr and two iovecs the kernel may read until the send completes.
    private let messageHeaders: UnsafeMutablePointer<msghdr>
    private let ioVectors: UnsafeMutablePointer<iovec>
    private let wakeupValue: UnsafeMutablePointer<UInt64>
    private var tally = LoadClientTally()

    /// Throws `RingError` when the ring cannot be had (no io_uring, forbidden,
    /// too little locked memory): the caller falls back to epoll.
    init(target: SocketAddress, connections count: Int, messageSizeBytes: Int, durationSeconds: Double,
         requestsPerSecond: Double?, control: LoadClientControl, multishotReceives: Bool = true) throws {
        self.target = target
        durationNanos = UInt64(min(durationSeconds, 1e9) * 1e9)
        schedule = LoadRequestSchedule(connections: count, requestsPerSecond: requestsPerSecond)
        self.control = control
        // Room for a send per connection in one turn; completions for a burst of replies.
        var entries: UInt32 = 64
        while entries < UInt32(min(count, 4096)) * 2 { entries <<= 1 }
        ring = try Ring(entries: entries, completionEntries: max(1024, entries * 4), reapBatchMax: 256)
        // A slot holds what one recv returns; twice the connections lent, so a
        // turn in which every connection's reply arrives finds a slot for each.
        let slotBytes = min(messageSizeBytes, LoadClientLoop.receiveBufferBytesMax)
        var pool: BufferPool?
        var buffers: ProvidedBuffers?
        if multishotReceives {
            let slots = min(max(64, count * 2), 8192)
            do {
                let candidate = try BufferPool(slotSize: slotBytes, slotCount: slots)
                buffers = try ProvidedBuffers(ring: ring, pool: candidate, windowSlots: slots)
                pool = candidate
            } catch {
                buffers = nil
            }
        }
        self.pool = pool
        self.buffers = buffers
        multishot = buffers != nil
        ownBufferBytes = min(messageSizeBytes, 16 * 1024)
        message = LoadMessage(sizeBytes: messageSizeBytes, connections: count)
        connections = (0..<count).map(ClientConnection.init)
        messageHeaders = .allocate(capacity: count)
        messageHeaders.initialize(repeating: msghdr(), count: count)
        ioVectors = .allocate(capacity: 2 * count)
        ioVectors.initialize(repeating: iovec(), count: 2 * count)
        wakeupValue = .allocate(capacity: 1)
        wakeupValue.initialize(to: 0)
    }

    deinit {
        for connection in connections where connection.state != .closed {
            close(connection.fd)
        }
        messageHeaders.deallocate()
        ioVectors.deallocate()
        wakeupValue.deallocate()
        ownBuffers?.deallocate()
    }

    private var backendDescription: String {
        multishot ? "io_uring (multishot receives)" : "io_uring (single-shot receives)"
    }

    @inline(__always)
    private func tag(_ kind: Kind, _ index: Int) -> CompletionTag {
        CompletionTag(kind: kind.rawValue, leg: 0, generation: 0, session: UInt32(truncatingIfNeeded: index))
    }

    func run(onSecond: (LoadProgress) -> Void) -> LoadResult {
        var clock = LoadRunClock(durationNanos: durationNanos)

        // This thread is the ring's only user: each wait skips a descriptor lookup.
        ring.registerRingDescriptor()
        armWakeup()
        tally.connectionsLive = connections.count
        for connection in connections {
            open(connection)
        }

        var nowNanos = MonotonicClock.nowNanos()
        while tally.connectionsLive > 0, !control.stopRequested.load(ordering: .acquiring) {
            nowNanos = MonotonicClock.nowNanos()
            guard var waitNanos = clock.turn(nowNanos: nowNanos, tally: tally, onSecond: onSecond) else { break }
            if schedule.intervalNanos > 0 {
                // Open loop: the requests that are due; their SQEs go out with the wait.
                let nextNanos = schedule.startDue(connections, nowNanos: nowNanos) { startRequest($0, nowNanos: $1) }
                waitNanos = min(waitNanos, nextNanos > nowNanos ? nextNanos - nowNanos : 0)
            }
            buffers?.commit()
            do {
                // At least 1 ns: a zero timeout would mean "wait without one".
                try ring.submitAndWait(count: 1, timeoutNanoseconds: Int64(max(waitNanos, 1)))
            } catch {
                tally.recordRunFailure("\(error)")
                break
            }
            let count = ring.reap()
            for index in 0..<count {
                handle(ring.completion(at: index))
            }
        }
        let (elapsedNanos, cpuNanos) = clock.finish()
        // The ring's teardown (deinit) cancels what is in flight; closing here
        // ends the connections now, as the epoll loop does.
        ClientConnection.closeAll(connections)
        return tally.result(
            elapsedNanos: elapsedNanos, cpuNanos: cpuNanos, connectionsRequested: connections.count,
            messageSizeBytes: message.sizeBytes, requestsPerSecondAsked: schedule.requestsPerSecondAsked,
            backend: backendDescription)
    }

    private func armWakeup() {
        ring.prepareRead(fd: control.wakeup.fd, into: wakeupValue, length: 8, tag: tag(.wakeup, 0))
    }

    // MARK: Completions

    private func handle(_ completion: Completion) {
        let index = Int(completion.tag.session)
        switch Kind(rawValue: completion.tag.kind) {
        case .connect:
            connected(connections[index], result: completion.result)
        case .receive:
            received(connections[index], completion)
        case .send:
            sent(connections[index], result: completion.result)
        case .wakeup:
            // stop() was called: the loop sees it before it waits again.
            if completion.result < 0, completion.result != -ECANCELED { armWakeup() }
        case .cancel, nil:
            break
        }
    }

    // MARK: Connections

    private func open(_ connection: ClientConnection) {
        let fd = socket(target.family, SocketCalls.streamNonBlocking, 0)
        guard fd >= 0 else {
            connection.state = .closed
            tally.recordFailure(connection: connection.index, "socket: \(errorDescription(errno))")
            return
        }
        connection.fd = fd
        do {
            try SocketCalls.setNoDelay(fd)
        } catch {
            fail(connection, "\(error)")
            return
        }
        // The kernel copies the address when the SQE is submitted, so submit now.
        target.withSockaddr { address, length in
            ring.prepareConnect(fd: fd, address: address, length: length, tag: tag(.connect, connection.index),
                                timeout: nil, timeoutTag: tag(.cancel, connection.index))
            ring.submit()
        }
    }

    private func connected(_ connection: ClientConnection, result: Int32) {
        guard connection.state == .connecting else { return }
        guard result >= 0 else {
            fail(connection, "connect \(target): \(errorDescription(-result))")
            return
        }
        let startsNow = schedule.connected(connection, messageSizeBytes: message.sizeBytes, tally: &tally)
        armReceive(connection)
        let nowNanos = MonotonicClock.nowNanos()
        if startsNow {
            startRequest(connection, nowNanos: nowNanos)
        } else {
            schedule.scheduleFirst(connection, nowNanos: nowNanos)
        }
    }

    private func fail(_ connection: ClientConnection, _ reason: String) {
        schedule.failed(connection, tally: &tally)
        if connection.state != .closed {
            // What is in flight on it holds the socket open: cancel it first, so
            // the peer sees the close now. Late completions find it closed.
            ring.prepareCancel(fd: connection.fd, tag: tag(.cancel, connection.index))
            ring.submit()
            close(connection.fd)
        }
        connection.state = .closed
        tally.recordFailure(connection: connection.index, reason)
    }

    // MARK: Requests

    private func startRequest(_ connection: ClientConnection, nowNanos: UInt64) {
        schedule.begin(connection, message, nowNanos: nowNanos)
        send(connection)
    }

    private func send(_ connection: ClientConnection) {
        let index = connection.index
        let vectors = ioVectors + 2 * index
        messageHeaders[index].msg_iov = vectors
        messageHeaders[index].msg_iovlen = message.fillIOVectors(vectors, connection: index, offset: connection.sendOffset)
        ring.prepareSendMessage(fd: connection.fd, message: messageHeaders + index, tag: tag(.send, index))
        connection.sendInFlight = true
    }

    private func sent(_ connection: ClientConnection, result: Int32) {
        connection.sendInFlight = false
        guard connection.state == .active else { return }
        guard result > 0 else {
            fail(connection, result == 0 ? "send: no byte sent" : "send: \(errorDescription(-result))")
            return
        }
        connection.sendOffset += Int(result)
        tally.bytesSent &+= UInt64(result)
        if connection.sendOffset < message.sizeBytes {
            send(connection)  // a short send: the rest
        } else if connection.replyWaitsForSend {
            connection.replyWaitsForSend = false
            completeRequest(connection)
        }
    }

    private func armReceive(_ connection: ClientConnection) {
        let receiveTag = tag(.receive, connection.index)
        if multishot, let buffers {
            ring.prepareRecvMultishot(fd: connection.fd, group: buffers.group, tag: receiveTag)
            return
        }
        if ownBuffers == nil {
            ownBuffers = .allocate(byteCount: ownBufferBytes * connections.count, alignment: 64)
        }
        ring.prepareRecv(fd: connection.fd, into: ownBuffers! + connection.index * ownBufferBytes,
                         length: ownBufferBytes, tag: receiveTag)
    }

    private func received(_ connection: ClientConnection, _ completion: Completion) {
        let result = completion.result
        var bytes: UnsafeRawPointer?
        if let slot = completion.selectedBuffer, let buffers, let pool {
            buffers.taken(slot)
            // The bytes are checked before the loop commits again: the slot can be lent at once.
            buffers.provide(slot)
            bytes = UnsafeRawPointer(pool.pointer(slot))
        } else if result > 0, let ownBuffers {
            bytes = UnsafeRawPointer(ownBuffers + connection.index * ownBufferBytes)
        }
        guard connection.state == .active else { return }
        if result > 0, let bytes {
            consume(connection, UnsafeRawBufferPointer(start: bytes, count: Int(result)))
            if connection.state == .active, !(multishot && completion.hasMore) { armReceive(connection) }
            return
        }
        switch -result {
        case 0:
            fail(connection, connection.receiveOffset == 0 || connection.receiveOffset == message.sizeBytes
                ? "closed by the peer"
                : "closed by the peer after \(connection.receiveOffset) of \(message.sizeBytes) response bytes")
        case ENOBUFS:
            armReceive(connection)  // more arrivals in one turn than slots lent; the next commit lends more
        case EINVAL where multishot:
            // No multishot recv in this kernel: single-shot from now on.
            multishot = false
            armReceive(connection)
        default:
            fail(connection, "recv: \(errorDescription(-result))")
        }
    }

    private func consume(_ connection: ClientConnection, _ bytes: UnsafeRawBufferPointer) {
        let remaining = message.sizeBytes - connection.receiveOffset
        guard remaining > 0 else {
            fail(connection, "bytes or EOF arrived with no request in flight")
            return
        }
        guard bytes.count <= remaining else {
            fail(connection, "\(bytes.count - remaining) bytes more than request \(connection.sequence) came back")
            return
        }
        if let index = message.firstMismatch(in: bytes, atOffset: connection.receiveOffset, connection: connection.index) {
            fail(connection, "response byte \(connection.receiveOffset + index) of request \(connection.sequence) differs from the request")
            return
        }
        connection.receiveOffset += bytes.count
        tally.bytesReceived &+= UInt64(bytes.count)
        guard connection.receiveOffset == message.sizeBytes else { return }
        if connection.sendInFlight {
            connection.replyWaitsForSend = true
        } else {
            completeRequest(connection)
        }
    }

    private func completeRequest(_ connection: ClientConnection) {
        if let startNanos = schedule.completed(connection, tally: &tally) {
            startRequest(connection, nowNanos: startNanos)
        }
    }
}
