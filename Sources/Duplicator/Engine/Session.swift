import Glibc
import Ring

/// One client connection and its legs: the client, main, and each mirror.
///
/// A sans-IO state machine: `start`, `handle`, `tick`, `resumeReceiving` and
/// `abort` take events and ask for operations through a `SessionIO`; it
/// never touches a socket itself. Sessions live in a fixed table and are
/// reused; `generation` tells a reused place's completions from its
/// predecessor's.
///
/// Where a byte goes: client recv -> one slot -> main's queue (the slot's
/// first reference) and each live mirror's backlog (one more reference
/// each) -> each completed send releases its reference -> the last one
/// recycles the slot. Main's bytes go to the client's queue the same way.
/// With `--compare`, main's bytes and each mirror's replies also go through
/// that mirror's `ReplyComparison` as they arrive (no copy kept beyond its window).
public final class Session {
    /// The most chunks one gathered send takes (the iovec entries a worker
    /// keeps per mirror leg).
    public static let gatherChunksMax = 32

    public let index: UInt32
    // Private storage behind the public reads (docs/contributing.md, "Private storage, public reads").
    private var _generation: UInt16 = 0
    var _isActive = false
    var _isEnding = false
    var _waitingForBuffers = false
    public var generation: UInt16 { _generation }
    public var isActive: Bool { _isActive }
    /// The client's session is over (both directions done, or failed); mirrors may still be flushing.
    public var isEnding: Bool { _isEnding }
    public internal(set) var endCause: EndCause?
    /// The session asked to be resumed when slots are back.
    public var waitingForBuffers: Bool { _waitingForBuffers }
    private var clientToMainDone = false
    private var mainToClientDone = false
    var lingerDeadlineMs: UInt64 = 0
    /// When a byte last moved between client and main (the idle timeout's clock).
    private var lastActivityMs: UInt64 = 0
    /// `--accept-proxy`: the client's header; main and the mirrors are not
    /// connected until it has been read whole.
    private var proxyHeader = ProxyHeaderReader()
    public var isAwaitingProxyHeader: Bool { proxyHeader.isAwaiting }
    /// What main and every mirror get first (`--send-proxy`): written once
    /// per session into memory the session owns, sent from there to each.
    let proxyHeaderOut: UnsafeMutableRawBufferPointer?
    var proxyHeaderOutLength = 0
    /// A wake-up of each `SessionTimer` was asked of the IO and has not
    /// come yet. Kept across a restart of the session: the IO calls
    /// whichever generation is there, which checks its own deadlines.
    private var batchWakeRequested = false
    private var turnWakeRequested = false
    /// Where the client's turns begin (`TurnGate`).
    private var turns = TurnCounter()
    /// Per mirror leg, the stream offsets at which its kept turns begin:
    /// `limits.mirrorTurns` entries from `turnStarts + leg * mirrorTurns`.
    private let turnStarts: UnsafeMutablePointer<UInt64>
    let legs: UnsafeMutablePointer<LegState>
    /// The legs this session's storage has: the mirror slots the worker was
    /// sized for (`Config.mirrorSlotCount`), fixed at init.
    private let legCapacity: Int
    /// The legs this session uses: those of the configuration it started
    /// with (a reload changes it for sessions that start later).
    private var _legCount: Int
    var legCount: Int { _legCount }
    /// The settings this session follows, taken from the worker's current
    /// configuration generation at start and kept to its end: a reload
    /// never changes a live session (`ConfigGeneration`).
    var limits: SessionLimits
    let context: SessionContext
    /// `--compare`: a comparison per mirror, or nil (then no byte is compared or kept).
    let compareTap: CompareTap?
    /// `--dump-dir`: what this session's streams were, for the pairs whose
    /// replies differ; nil: nothing recorded.
    var recordingTap: RecordingTap?
    /// Whether `recordingTap` is there: fixed at init, so the paths that ask
    /// need no run-time exclusivity check of `recordingTap` when it is not.
    let records: Bool
    /// `--record-dir`: this session's recording (`SessionRecordTap`), and
    /// whether there is one (fixed at init, as `records`).
    var recordTap: SessionRecordTap
    let recordsSessions: Bool

    /// Every leg of the session, the client first, then main, then the mirrors.
    var allLegs: LazyMapSequence<Range<Int>, Leg> {
        (0..<legCount).lazy.map { Leg(rawValue: UInt8(truncatingIfNeeded: $0)) }
    }

    var mirrorLegs: LazyMapSequence<Range<Int>, Leg> {
        (Leg.mirror(0).index..<legCount).lazy.map { Leg(rawValue: UInt8(truncatingIfNeeded: $0)) }
    }

    /// Chunk entries one session's queues need (see `SessionTable`).
    static func chunkCapacity(_ limits: SessionLimits) -> Int {
        2 * limits.readAheadChunks + limits.mirrorCount * limits.backlogChunksMax
    }

    /// - Parameters:
    ///   - chunkStorage: where position 0 of this session's first queue is;
    ///     `chunkCapacity(limits)` positions, owned by the caller.
    ///   - stride: entries from one position to the next (the table's size).
    ///   - compareWindows: with `--compare`, `mirrorCount` windows of
    ///     `compareWindowBytes` each, owned by the caller.
    init(index: UInt32, context: SessionContext, chunkStorage: UnsafeMutablePointer<SendQueue.Chunk>, stride: Int = 1,
         compareWindows: UnsafeMutableRawPointer? = nil) {
        self.index = index
        self.context = context
        let limits = context.limits
        self.limits = limits
        legCapacity = Leg.count(mirrors: limits.mirrorCount)
        _legCount = legCapacity
        legs = .allocate(capacity: legCapacity)
        proxyHeaderOut = limits.sendProxy == nil ? nil
            : .allocate(byteCount: ProxyProtocol.encodedBytesMax, alignment: 8)
        var storage = chunkStorage
        for position in 0..<legCapacity {
            let leg = Leg(rawValue: UInt8(position))
            let capacity = leg.isMirror ? limits.backlogChunksMax : limits.readAheadChunks
            legs.advanced(by: position).initialize(to: LegState(queue: SendQueue(storage: storage, stride: stride, capacity: capacity)))
            storage += capacity * stride
        }
        let windowBytes = limits.compareWindowBytes
        if windowBytes > 0, limits.mirrorCount > 0, let compareWindows {
            compareTap = CompareTap(windows: compareWindows, windowBytes: windowBytes, mirrorCount: limits.mirrorCount)
        } else {
            compareTap = nil
        }
        turnStarts = .allocate(capacity: max(1, legCapacity * limits.mirrorTurns))
        records = limits.dumpBytes > 0 && compareTap != nil
        recordsSessions = limits.recordBytes > 0
        recordTap = SessionRecordTap(bytesMax: limits.recordBytes)
        if records {
            recordingTap = RecordingTap(mirrorCount: limits.mirrorCount, bytesMax: limits.dumpBytes)
        }
    }

    deinit {
        turnStarts.deallocate()
        legs.deinitialize(count: legCapacity)
        legs.deallocate()
        proxyHeaderOut?.deallocate()
        compareTap?.deallocate()
    }

    @inline(__always)
    func tag(_ kind: OperationKind, _ leg: Leg) -> CompletionTag {
        CompletionTag(kind: kind, leg: leg, generation: generation, session: index)
    }

    // MARK: - Events

    /// A client was accepted on `clientFD`: connect main and the mirrors, start reading.
    public func start<IO: SessionIO>(clientFD: Int32, io: IO) {
        precondition(!isActive)
        // The configuration generation current now is this session's to its end.
        limits = context.sessionLimits
        _legCount = Leg.count(mirrors: limits.mirrorCount)
        _generation &+= 1
        _isActive = true
        _isEnding = false
        endCause = nil
        _waitingForBuffers = false
        clientToMainDone = false
        mainToClientDone = false
        lingerDeadlineMs = 0
        lastActivityMs = context.nowMs
        turns = TurnCounter()
        for leg in allLegs {
            let queue = legs[leg].queue
            precondition(queue.isEmpty)
            let keepsTurns = leg.isMirror && limits.mirrorTurns > 0
            legs[leg] = LegState(queue: queue,
                                 turns: keepsTurns ? TurnGate(starts: turnStarts + leg.index &* limits.mirrorTurns) : TurnGate())
        }
        compareTap?.reset(mirrors: limits.mirrorCount, comparing: limits.compareWindowBytes > 0)
        if records { recordingTap!.reset(nowUs: context.nowUs, bytesMax: limits.dumpBytes) }
        if recordsSessions {
            let sampled = context.recordSampling.draw()
            if !sampled { context.recordSink?.sampledOut() }
            recordTap.begin(nowUs: context.nowUs, sampled: sampled)
        }
        let stats = context.stats
        stats.sessionsAccepted.bump()
        stats.sessionsActive.bump()
        legs[.client].fd = clientFD
        legs[.client].phase = .open
        proxyHeaderOutLength = 0

        if limits.acceptProxy {
            // Main and the mirrors wait for the header: they get its client's
            // address, and a connection without one never reaches them.
            proxyHeader.begin(deadlineMs: context.nowMs + UInt64(limits.proxyHeaderTimeoutMs))
            context.sessionsAwaitingProxyHeader += 1
            armReceive(.client, io: io)
            return
        }
        connectUpstream(addresses: limits.sendProxy == nil ? nil : io.addresses(fd: clientFD), io: io)
    }


    /// A completion for this session (generation already checked by the caller).
    public func handle<IO: SessionIO>(kind: OperationKind, leg: Leg, result: Int32, selectedBuffer: UInt32?, io: IO) {
        guard leg.index < legCount else { return }
        switch kind {
        case .recv:
            legs[leg].inFlight &-= 1
            if leg.isMirror {
                mirrorReplied(leg, Outcome(transfer: result), slot: selectedBuffer, io: io)
            } else {
                received(leg, Outcome(transfer: result), slot: selectedBuffer, io: io)
            }
        case .discard:
            legs[leg].inFlight &-= 1
            discarded(leg, Outcome(transfer: result), io: io)
        case .send:
            legs[leg].inFlight &-= 1
            sent(leg, Outcome(transfer: result), io: io)
        case .connect:
            legs[leg].inFlight &-= 1
            connected(leg, Outcome(status: result), io: io)
        case .shutdown:
            legs[leg].inFlight &-= 1
            shutDown(leg, Outcome(status: result), io: io)
        case .accept, .acceptCancel, .connectTimeout, .cancel, .close, .tlsRecv, .tlsSend, .tlsStepped:
            return
        }
        settle(leg, io: io)
    }

    /// A wake-up asked for (`SessionIO.wake`) has come: send what is due to
    /// mirrors (a batch, or a turn a mirror did not answer in time), and ask
    /// again for what is not.
    public func timerFired<IO: SessionIO>(_ timer: SessionTimer, io: IO) {
        switch timer {
        case .mirrorBatch: batchWakeRequested = false
        case .mirrorTurn: turnWakeRequested = false
        }
        guard isActive else { return }
        for leg in mirrorLegs { kickSend(leg, io: io) }
    }

    /// Slots are back after the session found none.
    public func resumeReceiving<IO: SessionIO>(io: IO) {
        guard isActive, waitingForBuffers else { return }
        _waitingForBuffers = false
        armReceive(.client, io: io)
        armReceive(.main, io: io)
    }

    /// Time passed: mirrors still flushing after the session ended get
    /// `mirrorLingerMs`, then are closed.
    public func tick<IO: SessionIO>(io: IO) {
        guard isActive, isEnding, context.nowMs >= lingerDeadlineMs else { return }
        // A mirror still open now has not taken the whole stream in time:
        // what is in our backlog is lost, and so may be what the kernel
        // holds that the mirror has not acknowledged. The close is a FIN, and
        // the kernel goes on delivering; but a mirror that replies after it
        // gets a reset (TCP aborts a closed socket that is sent data) and
        // loses the rest. Either way it did not keep up: it is cut for lag
        // and those bytes count as missed.
        for leg in mirrorLegs where legs[leg].phase != .closed && legs[leg].phase != .closing {
            let unacknowledged = legs[leg].phase == .open ? io.unsentBytes(fd: legs[leg].fd) : 0
            if legs[leg].queue.isEmpty && unacknowledged == 0 {
                closeLeg(leg, io: io)  // it has the whole stream; only its EOF is still to come
            } else {
                cutMirror(leg, .lag, alsoMissed: unacknowledged, io: io)
            }
        }
        if legs[.main].flushing { closeLeg(.main, io: io) }
    }

    /// Ends the session when nothing moved between client and main for the
    /// idle timeout: a stalled or vanished peer must not hold a session (and
    /// its slots) forever. Mirrors flush and linger as after any end.
    public func checkIdle<IO: SessionIO>(io: IO) {
        let timeoutMs = limits.idleTimeoutMs
        guard isActive, !isEnding, timeoutMs > 0, context.nowMs &- lastActivityMs >= UInt64(timeoutMs) else { return }
        fail(.idleTimeout, io: io)
    }

    /// Ends the session now (shutdown past its drain time): every leg is closed.
    public func abort<IO: SessionIO>(io: IO) {
        guard isActive else { return }
        fail(.aborted, io: io)
        closeLeg(.main, io: io)
        for leg in mirrorLegs { cutMirror(leg, .failure, io: io) }
    }

    // MARK: - Receiving

    func armReceive<IO: SessionIO>(_ leg: Leg, io: IO) {
        guard legs[leg].phase == .open, legs[leg].read == .idle else { return }
        if leg.isMirror, let compareTap, compareTap.isOpen(leg.mirrorIndex) || recordingWants(leg) {
            // `--compare`: the mirror's replies are read into a slot to be
            // compared; not while they lead main's past the verbatim window
            // (`mirrorShouldWait`): main's next bytes read them again.
            if compareTap.mirrorShouldWait(leg.mirrorIndex, forBytes: context.pool.slotSize) { return }
            issueReceive(leg, io: io)
            return
        }
        if leg == .main, legs[leg].flushing, let compareTap, compareTap.anyOpen(mirrors: limits.mirrorCount) {
            // `--compare`: main's replies after the client failed are still
            // compared with the mirrors' (the servers' streams, whoever read them).
            issueReceive(leg, io: io)
            return
        }
        if leg.isMirror || legs[leg].flushing {
            legs[leg].read = .receiving
            legs[leg].inFlight &+= 1
            io.discard(fd: legs[leg].fd, tag: tag(.discard, leg))
            return
        }
        guard !isEnding, !waitingForBuffers else { return }
        if isAwaitingProxyHeader {
            // Only the client is open, and only its header is read.
            guard leg == .client else { return }
            issueReceive(leg, io: io)
            return
        }
        // Back-pressure: read from one side only while the other side's queue has room.
        let peer = leg == .client ? Leg.main : Leg.client
        let peerPhase = legs[peer].phase
        guard peerPhase == .open || peerPhase == .connecting,
              legs[peer].queue.count < limits.readAheadChunks else { return }
        issueReceive(leg, io: io)
    }

    @inline(__always)
    private func issueReceive<IO: SessionIO>(_ leg: Leg, io: IO) {
        legs[leg].read = .receiving
        legs[leg].inFlight &+= 1
        io.recv(fd: legs[leg].fd, tag: tag(.recv, leg))
    }

    private func received<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, slot: UInt32?, io: IO) {
        legs[leg].read = .idle
        if let slot { context.pool.adopt(slot) }
        guard case .done(let length) = outcome, let slot else {
            if let slot { releaseSlot(slot, from: leg, io: io) }
            receivedNothing(leg, outcome, io: io)
            return
        }
        guard legs[leg].phase == .open, !isEnding else {
            // Main's reply after the client failed: still part of main's stream (`--compare`).
            if legs[leg].flushing, let compareTap {
                compareMain(slot: slot, length: length, compareTap)
                resumeMirrorReplies(io: io)
            }
            releaseSlot(slot, from: leg, io: io)
            if legs[leg].flushing { armReceive(leg, io: io) }  // now as a discard, unless compared
            return
        }
        lastActivityMs = context.nowMs
        if isAwaitingProxyHeader {
            receivedProxyHeader(slot: slot, length: length, io: io)
        } else if leg == .client {
            forwardFromClient(slot: slot, offset: 0, length: length, io: io)
        } else {
            turns.mainReplied()
            context.stats.bytesMainToClient.bump(length)
            if let compareTap { compareMain(slot: slot, length: length, compareTap) }
            if recordsSessions {
                recordTap.appendMain(UnsafeRawBufferPointer(start: context.pool.pointer(slot), count: length), nowUs: context.nowUs)
            }
            legs[.client].queue.append(slot: slot, length: length)
            kickSend(.client, io: io)
            if compareTap != nil { resumeMirrorReplies(io: io) }
        }
        armReceive(leg, io: io)
    }

    /// Main's stream moved (or ended): mirrors whose replies waited for it
    /// (`mirrorShouldWait`) read again.
    func resumeMirrorReplies<IO: SessionIO>(io: IO) {
        for leg in mirrorLegs where legs[leg].read == .idle && legs[leg].phase == .open { armReceive(leg, io: io) }
    }

    /// A receive on the client or main that brought no bytes: EOF, no
    /// free slot, or an error.
    private func receivedNothing<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        if legs[leg].flushing {
            if let compareTap {
                // Main's EOF ends its stream; no free slot gives the
                // comparisons up (its replies are then discarded, as without `--compare`).
                switch outcome {
                case .endOfStream: compareTap.mainEnded(mirrors: limits.mirrorCount)
                case .noBuffer: compareTap.abandonAll(mirrors: limits.mirrorCount)
                case .done, .cancelled, .failed: break
                }
                resumeMirrorReplies(io: io)
            }
            flushed(leg, outcome, io: io)
            return
        }
        switch outcome {
        case .endOfStream where isAwaitingProxyHeader:
            refuseProxyHeader(.closedEarly, io: io)
        case .endOfStream:
            endOfStream(from: leg, io: io)
        case .noBuffer:
            // Client and main may both find the pool dry; ask to be resumed once.
            context.stats.poolExhausted.bump()
            if !waitingForBuffers {
                _waitingForBuffers = true
                io.waitForBuffers(session: index)
            }
        case .done, .cancelled, .failed:
            if legs[leg].phase == .open { fail(leg == .client ? .clientError : .mainError, io: io) }
        }
    }

    @inline(__always)
    private func forwardFromClient<IO: SessionIO>(slot: UInt32, offset: Int, length: Int, io: IO) {
        context.stats.bytesClientToMain.bump(length)
        if records {
            recordingTap!.append(.client, UnsafeRawBufferPointer(start: context.pool.pointer(slot) + offset, count: length),
                                 nowUs: context.nowUs)
        }
        if recordsSessions {
            recordTap.appendClient(UnsafeRawBufferPointer(start: context.pool.pointer(slot) + offset, count: length), nowUs: context.nowUs)
        }
        // Main first: its send goes into the ring ahead of the mirrors',
        // so the client's request never waits behind a mirror's send (each
        // loopback send also wakes its reader).
        legs[.main].queue.append(slot: slot, offset: offset, length: length)
        kickSend(.main, io: io)
        let newTurn = turns.clientSent(turnsMax: limits.mirrorTurns)
        copyToMirrors(slot: slot, offset: offset, length: length, newTurn: newTurn, io: io)
    }

    /// The same slot goes into each live mirror's backlog: no copy.
    @inline(__always)
    private func copyToMirrors<IO: SessionIO>(slot: UInt32, offset: Int, length: Int, newTurn: Bool, io: IO) {
        let limits = self.limits
        for leg in mirrorLegs {
            if legs[leg].missing {
                context.stats.mirrors[leg.mirrorIndex].bytesMissed.bump(length)
                continue
            }
            let phase = legs[leg].phase
            guard phase == .open || phase == .connecting else { continue }
            if legs[leg].queue.isFull || legs[leg].queue.bytes + length > limits.backlogBytesMax {
                cutMirror(leg, .lag, io: io)
                context.stats.mirrors[leg.mirrorIndex].bytesMissed.bump(length)
                continue
            }
            context.pool.retain(slot)
            legs[leg].turns.queued(length, beginsTurn: newTurn)
            legs[leg].queue.append(slot: slot, offset: offset, length: length)
            legs[leg].batch.queued(nowUs: context.nowUs, delayUs: limits.mirrorBatchDelayUs)
            kickSend(leg, io: io)
        }
    }

    private func endOfStream<IO: SessionIO>(from leg: Leg, io: IO) {
        legs[leg].read = .ended
        if leg == .client {
            legs[.main].shutdownWanted = true
            kickSend(.main, io: io)
            for mirror in mirrorLegs {
                legs[mirror].shutdownWanted = true
                kickSend(mirror, io: io)
            }
        } else {
            if let compareTap {
                compareTap.mainEnded(mirrors: limits.mirrorCount)
                resumeMirrorReplies(io: io)
            }
            legs[.client].shutdownWanted = true
            kickSend(.client, io: io)
        }
    }

    func discarded<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        legs[leg].read = .idle
        if legs[leg].flushing {
            flushed(leg, outcome, io: io)
            return
        }
        switch outcome {
        case .done(let length):
            let stats = context.stats.mirrors[leg.mirrorIndex]
            stats.replyBytes.bump(length)
            stats.discards.bump()
            if legs[leg].turns.isKept {
                legs[leg].turns.answered(inFlightBytes: legs[leg].bytesInFlight)
                kickSend(leg, io: io)
            }
            armReceive(leg, io: io)
        case .endOfStream:
            // The mirror finished writing. Once ours is shut too, it is done;
            // before that it may still read, so keep sending.
            compareTap?.mirrorEnded(leg.mirrorIndex)
            peerEnded(leg, io: io)
        case .noBuffer, .cancelled, .failed:
            guard legs[leg].phase == .open else { return }
            context.stats.mirrors[leg.mirrorIndex].errors.bump()
            cutMirror(leg, .failure, io: io)
        }
    }

    /// A flushing main's or a mirror's EOF: closed once our FIN is through too.
    private func peerEnded<IO: SessionIO>(_ leg: Leg, io: IO) {
        legs[leg].read = .ended
        if case .shutDown = legs[leg].write { closeLeg(leg, io: io) }
    }

    /// A discard or receive completed on main while it flushes: more replies
    /// are discarded; its EOF (after our SHUT_WR) or an error closes it.
    private func flushed<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        switch outcome {
        case .done:
            armReceive(leg, io: io)
        case .endOfStream:
            peerEnded(leg, io: io)
        case .noBuffer where legs[leg].phase == .open:
            armReceive(leg, io: io)
        case .noBuffer, .cancelled, .failed:
            closeLeg(leg, io: io)
        }
    }

    // MARK: - The client's PROXY protocol header (--accept-proxy)

    /// Bytes from a client whose header is not yet whole: read them, then
    /// connect main and the mirrors and forward what followed the header in
    /// the same receive.
    private func receivedProxyHeader<IO: SessionIO>(slot: UInt32, length: Int, io: IO) {
        // The reader changes in a copy: an access to `proxyHeader` held across
        // `read`, which calls into the pool, would have Swift check every
        // access to it at run time, the hot path's `isAwaitingProxyHeader`
        // included (docs/contributing.md, "Private storage, public reads").
        var reader = proxyHeader
        let step = reader.read(slot: slot, length: length, pool: context.pool)
        proxyHeader = reader
        switch step {
        case .incomplete(let releasesSlot):
            if releasesSlot { releaseSlot(slot, from: .client, io: io) }
            armReceive(.client, io: io)
        case .invalid(let failure):
            releaseSlot(slot, from: .client, io: io)
            refuseProxyHeader(.invalid(failure), io: io)
        case .complete(let headerPart, let addresses):
            stopAwaitingProxyHeader(io: io)
            connectUpstream(addresses: addresses ?? io.addresses(fd: legs[.client].fd), io: io)
            if length > headerPart && !isEnding {
                forwardFromClient(slot: slot, offset: headerPart, length: length - headerPart, io: io)
            } else {
                releaseSlot(slot, from: .client, io: io)
            }
        }
    }

    func stopAwaitingProxyHeader<IO: SessionIO>(io: IO) {
        guard isAwaitingProxyHeader else { return }
        context.sessionsAwaitingProxyHeader -= 1
        if let held = proxyHeader.stop() { releaseSlot(held, from: .client, io: io) }
    }

    /// A client whose header is not whole by its deadline is closed.
    public func checkProxyHeaderDeadline<IO: SessionIO>(io: IO) {
        guard isActive, proxyHeader.isOverdue(nowMs: context.nowMs) else { return }
        refuseProxyHeader(.timedOut, io: io)
    }

    /// Ends the session of a client whose header was refused, and tells the log whose and why.
    private func refuseProxyHeader<IO: SessionIO>(_ refusal: ProblemLog.HeaderRefusal, io: IO) {
        guard !isEnding else { return }
        context.problems.proxyHeaderRefused(refusal, peer: io.addresses(fd: legs[.client].fd)?.source)
        fail(.badProxyHeader, io: io)
    }

    // MARK: - Sending

    func kickSend<IO: SessionIO>(_ leg: Leg, io: IO) {
        guard legs[leg].phase == .open, case .idle = legs[leg].write else { return }
        if leg != .client, legs[leg].proxyHeaderSent < proxyHeaderOutLength, let proxyHeaderOut {
            // The header goes before any client byte, and before our FIN.
            let sent = legs[leg].proxyHeaderSent
            legs[leg].write = .sendingHeader
            legs[leg].inFlight &+= 1
            io.send(fd: legs[leg].fd, from: UnsafeRawPointer(proxyHeaderOut.baseAddress! + sent),
                    length: proxyHeaderOutLength - sent, tag: tag(.send, leg))
            return
        }
        var turnLimit = Int.max
        if legs[leg].turns.isKept && !legs[leg].queue.isEmpty {
            turnLimit = mirrorTurnLimit(leg, io: io)
            if turnLimit == 0 { return }
        }
        if leg.isMirror && limits.mirrorBatchBytes > 0 && !legs[leg].queue.isEmpty {
            kickMirrorBatch(leg, turnLimit: turnLimit, io: io)
        } else if let chunk = legs[leg].queue.first {
            legs[leg].write = .sending(chunks: 1, bytes: Int(chunk.length))
            legs[leg].inFlight &+= 1
            io.send(fd: legs[leg].fd, slot: chunk.slot, offset: Int(chunk.offset), length: Int(chunk.length),
                    tag: tag(.send, leg))
        } else if legs[leg].shutdownWanted {
            legs[leg].write = .shuttingDown
            legs[leg].inFlight &+= 1
            io.shutdownWrite(fd: legs[leg].fd, tag: tag(.shutdown, leg))
        }
    }

    /// A mirror's queued chunks go out together when its batch is due
    /// (`MirrorBatcher`); until then the session asks to be woken.
    private func kickMirrorBatch<IO: SessionIO>(_ leg: Leg, turnLimit: Int, io: IO) {
        let queue = legs[leg].queue
        switch legs[leg].batch.decide(queue: queue, batchBytes: limits.mirrorBatchBytes, delayUs: limits.mirrorBatchDelayUs,
                                      nowUs: context.nowUs, streamEnds: legs[leg].shutdownWanted,
                                      bytesMax: turnLimit, chunksMax: Self.gatherChunksMax) {
        case .wait(let deadlineUs):
            if !batchWakeRequested {
                batchWakeRequested = true
                io.wake(session: index, atUs: deadlineUs, for: .mirrorBatch)
            }
        case .send(let chunks, let length):
            legs[leg].write = .sending(chunks: chunks, bytes: length)
            legs[leg].inFlight &+= 1
            if chunks == 1 {
                let chunk = queue.chunk(at: 0)
                io.send(fd: legs[leg].fd, slot: chunk.slot, offset: Int(chunk.offset), length: length, tag: tag(.send, leg))
            } else {
                io.sendGathered(fd: legs[leg].fd, queue: queue, chunks: chunks, length: length, tag: tag(.send, leg))
            }
        }
    }

    /// The bytes this mirror may be sent now under its kept turns
    /// (`TurnGate`; 0: it waits for an answer, and the session for a wake-up).
    private func mirrorTurnLimit<IO: SessionIO>(_ leg: Leg, io: IO) -> Int {
        let held = legs[leg].queue
        switch legs[leg].turns.decide(nowUs: context.nowUs, timeoutUs: limits.mirrorTurnTimeoutUs, heldBytes: held.bytes,
                                      heldChunks: held.count,
                                      heldChunksMax: TurnGate.heldChunksMax(limits, mirrorShareSlots: context.mirrorOnlySlotsMax,
                                                                            sessionsActive: Int(context.stats.sessionsActive.value)),
                                      allTurnsBegun: turns.begun >= limits.mirrorTurns) {
        case .send(let bytesMax):
            return bytesMax
        case .wait(let deadlineUs):
            if !turnWakeRequested {
                turnWakeRequested = true
                io.wake(session: index, atUs: deadlineUs, for: .mirrorTurn)
            }
            return 0
        case .stopKeeping:
            // The kept turns are past: the mirror's replies are discarded in batches again.
            if !legs[leg].shutdownIssued { io.discardInBatches(fd: legs[leg].fd) }
            return Int.max
        }
    }

    private func sent<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        let sendingBytes: Int
        let wasHeader: Bool
        switch legs[leg].write {
        case .sending(_, let bytes): (sendingBytes, wasHeader) = (bytes, false)
        case .sendingHeader: (sendingBytes, wasHeader) = (0, true)
        case .idle, .shuttingDown, .shutDown:
            assertionFailure("a send completed on \(leg) with none in flight")
            return
        }
        legs[leg].write = .idle
        guard legs[leg].phase == .open else {
            dropQueue(leg, io: io)
            return
        }
        guard case .done(let length) = outcome else {
            if legs[leg].flushing {
                closeLeg(leg, io: io)
                return
            }
            switch leg {
            case .client: fail(.clientError, io: io)
            case .main: fail(.mainError, io: io)
            default:
                context.stats.mirrors[leg.mirrorIndex].errors.bump()
                cutMirror(leg, .failure, io: io)
            }
            return
        }
        if wasHeader {
            // While a leg owes the header, its one send in flight is the header's.
            legs[leg].proxyHeaderSent += length
            kickSend(leg, io: io)
            return
        }
        if leg.isMirror {
            context.stats.mirrors[leg.mirrorIndex].bytesSent.bump(length)
            context.stats.mirrors[leg.mirrorIndex].sends.bump()
        } else {
            lastActivityMs = context.nowMs
        }
        legs[leg].turns.sent(length)
        var unconsumed = min(length, sendingBytes)
        while unconsumed > 0, let first = legs[leg].queue.first {
            let part = min(unconsumed, Int(first.length))
            unconsumed &-= part
            if let slot = legs[leg].queue.consume(part) { releaseSlot(slot, from: leg, io: io) }
        }
        // A short send: the rest of what went together is due now.
        if length < sendingBytes { legs[leg].batch.sentShort() }
        kickSend(leg, io: io)
        // The queue has room again: the other side may be read.
        if leg == .main { armReceive(.client, io: io) }
        else if leg == .client { armReceive(.main, io: io) }
    }

    func releaseSlot<IO: SessionIO>(_ slot: UInt32, from leg: Leg, io: IO) {
        if context.pool.release(slot) {
            context.slotFreed(slot)
            io.recycle(slot: slot)
        } else if leg == .main {
            // Only mirrors hold it now. If mirrors hold more than their share
            // of the pool, this session's laggiest mirror gives its slots back.
            if !context.markMirrorOnly(slot), let laggiest = laggiestMirror() {
                cutMirror(laggiest, .poolShare, io: io)
            }
        }
    }

    /// The live mirror leg with the most bytes queued, if any has some.
    private func laggiestMirror() -> Leg? {
        var laggiest: Leg?
        var most = 0
        for leg in mirrorLegs where legs[leg].phase != .closed && legs[leg].phase != .closing {
            if legs[leg].queue.bytes > most {
                most = legs[leg].queue.bytes
                laggiest = leg
            }
        }
        return laggiest
    }

    /// Releases the queued chunks of a closing leg, but not those that a
    /// send in flight is still reading (they go when the send completes).
    func dropQueue<IO: SessionIO>(_ leg: Leg, io: IO) {
        let keep = legs[leg].chunksInFlight
        while legs[leg].queue.count > keep, let chunk = legs[leg].queue.removeLast() {
            releaseSlot(chunk.slot, from: leg, io: io)
        }
    }

    private func shutDown<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        legs[leg].write = .shutDown
        if legs[leg].flushing {
            if legs[leg].read == .ended || !outcome.succeeded { closeLeg(leg, io: io) }
            return
        }
        switch leg {
        case .main: clientToMainDone = true
        case .client: mainToClientDone = true
        default:
            // The mirror has the whole stream; wait for its EOF (or the linger time) so
            // closing does not reset a connection whose last bytes it has not read.
            if legs[leg].read == .ended || !outcome.succeeded { closeLeg(leg, io: io) }
            return
        }
        if clientToMainDone && mainToClientDone && !isEnding {
            end(.completed, io: io)
        }
    }
}
