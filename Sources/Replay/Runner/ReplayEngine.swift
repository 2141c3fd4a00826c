import Duplicator
import Glibc
import Histogram
import Platform

/// The replayer's logic, over any `ReplayIO`: starts each recorded session
/// when it is due (the recorded gaps scaled by `--speed`, at most
/// `--connections` at once), sends its turns one by one, each once the
/// target has answered the previous one as much as the recording did (or
/// the turn timeout passed), compares the target's replies with the
/// recorded ones (`ReplyComparison`, as the proxy's `--compare`), and
/// records each turn's latency. Single-threaded, driven by its driver's loop.
public final class ReplayEngine<IO: ReplayIO> {
    public let options: ReplayOptions
    let sessions: [RecordedSession]
    /// Each session's client bytes, in memory that stays put while sends are in flight.
    private var clientBytes: [UnsafeMutableRawBufferPointer?]
    private var slots: [ReplaySlot] = []
    private var freeSlots: [Int] = []
    private var active = 0
    private var nextSession = 0
    public private(set) var counts = ReplayCounts()
    private(set) var latencyNanos = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000_000,
                                                      numberOfSignificantValueDigits: .three)
    let startUs: UInt64
    private let firstRecordedUs: UInt64
    public weak var io: IO?
    /// Where dumps of the sessions that differ go (`--dump-dir`); nil: none.
    public var dumps: DumpSink?

    public init(sessions: [RecordedSession], options: ReplayOptions, nowUs: UInt64) {
        self.sessions = sessions
        self.options = options
        clientBytes = Array(repeating: nil, count: sessions.count)
        startUs = nowUs
        firstRecordedUs = sessions.first?.startUs ?? 0
        counts.sessions = sessions.count
    }

    deinit {
        for slot in slots { slot.deallocate() }
        for bytes in clientBytes { bytes?.deallocate() }
    }

    public var isDone: Bool { counts.sessionsDone == sessions.count }

    /// Microseconds until the next session is due (nil: none waits on time).
    public func nextDueUs(nowUs: UInt64) -> UInt64? {
        guard nextSession < sessions.count, active < options.connectionsMax else { return nil }
        guard case .scaled(let speed) = options.speed else { return 0 }
        let due = startUs + UInt64(Double(sessions[nextSession].startUs &- firstRecordedUs) / speed)
        return due > nowUs ? due - nowUs : 0
    }

    /// Starts every session that is due and has a connection free.
    public func startDue(nowUs: UInt64) {
        while nextDueUs(nowUs: nowUs) == 0 {
            start(nextSession, nowUs: nowUs)
            nextSession += 1
        }
    }

    /// Turns waiting too long, and drains the target did not end: moved on.
    public func tick(nowUs: UInt64) {
        let timeoutUs = UInt64(options.turnTimeoutMs) * 1000
        for index in slots.indices where slots[index].state == .open {
            let slot = slots[index]
            // A completion handled after `nowUs` was read may have set a later time: not due yet.
            guard !slot.sending, slot.waitingSinceUs != 0, nowUs >= slot.waitingSinceUs,
                  nowUs - slot.waitingSinceUs >= timeoutUs else { continue }
            if slot.draining {
                finish(index, nowUs: nowUs)
            } else {
                counts.turnsTimedOut += 1
                advance(index, nowUs: nowUs, answered: false)
            }
        }
    }

    private func start(_ session: Int, nowUs: UInt64) {
        let family = Int32(options.target.storage.ss_family)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        counts.sessionsStarted += 1
        guard fd >= 0 else {
            counts.connectFailed += 1
            if counts.firstConnectErrno == 0 { counts.firstConnectErrno = errno }
            settle(session, verdict: .incomplete)
            return
        }
        var on: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        let index: Int
        if let free = freeSlots.popLast() {
            index = free
        } else {
            index = slots.count
            slots.append(ReplaySlot(receiveBytes: options.receiveBytes, windowBytes: options.compare ? options.compareWindowBytes : nil))
        }
        if clientBytes[session] == nil {
            let bytes = sessions[session].clientBytes
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 16)
            bytes.withUnsafeBytes { copy.copyMemory(from: $0) }
            clientBytes[session] = copy
        }
        slots[index].reset(session: session, fd: fd)
        slots[index].turnStartUs = nowUs
        slots[index].sessionStartUs = nowUs
        active += 1
        io?.connect(slot: index, fd: fd)
    }

    // MARK: Completions

    public func connected(slot index: Int, result: Int32, nowUs: UInt64) {
        guard slots[index].state == .connecting else { return }
        guard result >= 0 else {
            counts.connectFailed += 1
            if counts.firstConnectErrno == 0 { counts.firstConnectErrno = -result }
            slots[index].ending = .connectFailed(-result)
            slots[index].state = .open
            finish(index, nowUs: nowUs)
            return
        }
        slots[index].state = .open
        slots[index].turnStartUs = nowUs
        receive(index)
        pump(index, nowUs: nowUs)
    }

    public func sent(slot index: Int, result: Int32, nowUs: UInt64) {
        slots[index].sending = false
        if slots[index].state == .closing {
            closeIfQuiet(index)
            return
        }
        guard result > 0 else {
            fail(index, errno: result == 0 ? EPIPE : -result, nowUs: nowUs)
            return
        }
        let session = slots[index].session
        if options.compare && dumps != nil, let bytes = clientBytes[session] {
            let start = slots[index].sentBytes
            slots[index].clientPieces.append(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + Int(result))]),
                                             bytesMax: options.dumpBytes, timeUs: nowUs)
        }
        slots[index].sentBytes += Int(result)
        counts.bytesSent += UInt64(result)
        pump(index, nowUs: nowUs)
    }

    public func received(slot index: Int, result: Int32, nowUs: UInt64) {
        slots[index].receiving = false
        if slots[index].state == .closing {
            closeIfQuiet(index)
            return
        }
        guard result >= 0 else {
            fail(index, errno: -result, nowUs: nowUs)
            return
        }
        if result == 0 {
            slots[index].targetEnded = true
            if slots[index].draining || slots[index].turn >= sessions[slots[index].session].turns.count {
                finish(index, nowUs: nowUs)
            } else {
                pump(index, nowUs: nowUs)
            }
            return
        }
        let count = Int(result)
        let bytes = UnsafeRawBufferPointer(start: slots[index].receiveBuffer, count: count)
        counts.bytesReceived += UInt64(count)
        if options.compare { compare(index, bytes) }
        if options.compare && dumps != nil {
            slots[index].targetReplies.append(bytes, bytesMax: options.dumpBytes, timeUs: nowUs)
        }
        slots[index].receivedBytes += count
        receive(index)
        pump(index, nowUs: nowUs)
    }

    /// The recorded bytes at the same offsets first, then the target's: the
    /// recorded side never leads by more than one receive, well inside the window.
    private func compare(_ index: Int, _ bytes: UnsafeRawBufferPointer) {
        let recorded = sessions[slots[index].session].serverBytes
        let from = slots[index].recordedFed
        let to = min(recorded.count, slots[index].receivedBytes + bytes.count)
        if to > from {
            recorded.withUnsafeBytes { slots[index].comparison!.append(.main, UnsafeRawBufferPointer(rebasing: $0[from..<to])) }
            slots[index].recordedFed = to
        }
        if slots[index].recordedFed == recorded.count && !slots[index].recordedEnded {
            slots[index].recordedEnded = true
            slots[index].comparison!.end(.main)
        }
        slots[index].comparison!.append(.mirror, bytes)
    }

    private func receive(_ index: Int) {
        guard !slots[index].receiving, !slots[index].targetEnded else { return }
        slots[index].receiving = true
        io?.receive(slot: index, fd: slots[index].fd, into: slots[index].receiveBuffer, options.receiveBytes)
    }

    // MARK: Turns

    /// Sends what the current turn still has to send, or moves to the next
    /// turn once this one is answered.
    private func pump(_ index: Int, nowUs: UInt64) {
        while slots[index].state == .open && !slots[index].sending && !slots[index].draining {
            let session = sessions[slots[index].session]
            let turn = slots[index].turn
            guard turn < session.turns.count else {
                drain(index, nowUs: nowUs)
                return
            }
            let requestEnd = session.turns[turn].requestEnd
            if slots[index].sentBytes < requestEnd {
                let bytes = clientBytes[slots[index].session]!
                slots[index].sending = true
                io?.send(slot: index, fd: slots[index].fd, bytes.baseAddress! + slots[index].sentBytes,
                         requestEnd - slots[index].sentBytes)
                return
            }
            if slots[index].waitingSinceUs == 0 { slots[index].waitingSinceUs = max(nowUs, 1) }
            let answered = slots[index].receivedBytes >= session.turns[turn].replyEnd
            guard answered || slots[index].targetEnded else { return }
            advance(index, nowUs: nowUs, answered: answered)
            return
        }
    }

    /// The current turn is over: its latency counted (if it asked and was
    /// answered), then the next turn.
    private func advance(_ index: Int, nowUs: UInt64, answered: Bool) {
        let session = sessions[slots[index].session]
        let turn = slots[index].turn
        let previous = turn > 0 ? session.turns[turn - 1] : RecordedSession.Turn(requestEnd: 0, replyEnd: 0, timeUs: 0)
        let current = session.turns[turn]
        if current.requestEnd > previous.requestEnd {
            counts.requests += 1
            if answered && current.replyEnd > previous.replyEnd {
                let startUs = slots[index].turnStartUs
                latencyNanos.record(min((nowUs > startUs ? nowUs - startUs : 0) * 1000, 600_000_000_000))
            }
        }
        slots[index].turn += 1
        slots[index].turnStartUs = nowUs
        slots[index].waitingSinceUs = 0
        pump(index, nowUs: nowUs)
    }

    /// Every turn sent: end the client's side as the recording did, and
    /// wait for the target's end (bounded by the turn timeout).
    private func drain(_ index: Int, nowUs: UInt64) {
        let session = sessions[slots[index].session]
        guard (session.clientClosed || session.serverClosed) && !slots[index].targetEnded else {
            finish(index, nowUs: nowUs)
            return
        }
        slots[index].draining = true
        slots[index].waitingSinceUs = max(nowUs, 1)
        if session.clientClosed && !slots[index].wroteShutdown {
            slots[index].wroteShutdown = true
            shutdown(slots[index].fd, Int32(SHUT_WR))
        }
    }

    private func fail(_ index: Int, errno: Int32, nowUs: UInt64) {
        if slots[index].ending == .none { slots[index].ending = .reset(errno) }
        finish(index, nowUs: nowUs)
    }

    // MARK: The end of a session

    /// Ends the session: what is in flight is cut short (`shutdown`), the
    /// descriptor closed once nothing is, and the verdict counted.
    private func finish(_ index: Int, nowUs: UInt64) {
        guard slots[index].state != .closing && slots[index].state != .idle else { return }
        let session = slots[index].session
        if case .reset = slots[index].ending { counts.resets += 1 }
        if options.compare { settleComparison(index, nowUs: nowUs) }
        counts.sessionsDone += 1
        clientBytes[session]?.deallocate()
        clientBytes[session] = nil
        slots[index].state = .closing
        if slots[index].inFlight { shutdown(slots[index].fd, Int32(SHUT_RDWR)) }
        closeIfQuiet(index)
    }

    private func closeIfQuiet(_ index: Int) {
        guard slots[index].state == .closing, !slots[index].sending, !slots[index].receiving else { return }
        close(slots[index].fd)
        slots[index].fd = -1
        slots[index].state = .idle
        slots[index].session = -1
        freeSlots.append(index)
        active -= 1
    }

    /// A session that never got a connection.
    private func settle(_ session: Int, verdict: ReplyComparison.Verdict) {
        if options.compare { counts.verdicts[verdict.rawValue] += 1 }
        counts.sessionsDone += 1
    }

    private func settleComparison(_ index: Int, nowUs: UInt64) {
        let slot = slots[index]
        let recorded = sessions[slot.session].serverBytes
        var comparison = slot.comparison!
        let verdict: ReplyComparison.Verdict
        switch slot.ending {
        case .connectFailed:
            verdict = .incomplete
        case .none, .reset:
            if let decided = comparison.decided {
                verdict = decided
            } else if slot.recordedFed < recorded.count {
                // Every byte the target sent was equal; the recording has more.
                verdict = slot.ending == .none ? .shorter : .incomplete
            } else {
                if !slot.recordedEnded { comparison.end(.main) }
                comparison.end(.mirror)
                verdict = comparison.verdict
            }
        }
        counts.verdicts[verdict.rawValue] += 1
        slots[index].comparison = comparison
        if verdict != .match, dumps != nil, case .none = slot.ending {
            submitDump(index, verdict: verdict, divergenceOffset: comparison.divergenceOffset, nowUs: nowUs)
        }
    }

    /// A dump of a session that differs: the recording's conversation and the target's.
    private func submitDump(_ index: Int, verdict: ReplyComparison.Verdict, divergenceOffset: UInt64, nowUs: UInt64) {
        guard let dumps else { return }
        let slot = slots[index]
        let session = sessions[slot.session]
        var recordedReplies = SessionRecording.Stream()
        recordedReplies.bytes = Array(session.serverBytes.prefix(options.dumpBytes))
        recordedReplies.droppedBytes = UInt64(session.serverBytes.count - recordedReplies.bytes.count)
        // The recorded replies at the replay's times of the turns that asked for them.
        var end = 0
        for (turnIndex, turn) in session.turns.enumerated() where turn.replyEnd > end && turn.replyEnd <= recordedReplies.bytes.count {
            end = turn.replyEnd
            recordedReplies.pieceEnds.append(end)
            let pieceIndex = min(turnIndex, max(0, slot.clientPieces.pieceTimesUs.count - 1))
            recordedReplies.pieceTimesUs.append(slot.clientPieces.pieceTimesUs.isEmpty ? nowUs : slot.clientPieces.pieceTimesUs[pieceIndex] + 1)
        }
        if end < recordedReplies.bytes.count {
            recordedReplies.pieceEnds.append(recordedReplies.bytes.count)
            recordedReplies.pieceTimesUs.append(nowUs)
        }
        let addresses = ProxyAddresses(source: session.client, destination: session.server)
        dumps.submit(DumpRequest(mirror: 0, verdict: verdict, divergenceOffset: divergenceOffset, clientAddresses: addresses,
                                 startUs: slot.sessionStartUs, endUs: nowUs, client: slot.clientPieces.stream,
                                 main: recordedReplies, mirrorReplies: slot.targetReplies.stream))
        counts.dumpsSubmitted += 1
    }

    /// Per-turn latency percentiles, in microseconds (0 when no turn was answered).
    public func latencyMicros(percentile: Double) -> Double {
        latencyNanos.totalCount == 0 ? 0 : Double(latencyNanos.valueAtPercentile(percentile)) / 1000
    }

    public var latencyCount: UInt64 { latencyNanos.totalCount }
}
