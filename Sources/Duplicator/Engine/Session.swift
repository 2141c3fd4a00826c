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
    public enum EndCause: Sendable {
        case completed, clientError, mainConnectFailure, mainError, idleTimeout, aborted
        /// `--accept-proxy`: the client's PROXY protocol header was missing,
        /// malformed, oversized, or not whole by its deadline.
        case badProxyHeader
    }

    /// Why a mirror is disconnected for the rest of a session.
    enum MirrorCut {
        /// It fell more than its backlog limit behind, or had not taken the
        /// whole stream when its linger ended.
        case lag
        /// Mirrors together held their share of the pool; this session's
        /// laggiest mirror gave its slots back.
        case poolShare
        /// An error on its connection, or the session was aborted.
        case failure
    }

    struct LegState {
        enum Phase: UInt8 { case idle, connecting, open, closing, closed }
        var phase = Phase.idle
        var fd: Int32 = -1
        /// Operations on `fd` whose completion has not arrived; the fd is
        /// closed only at zero.
        var inFlight: Int32 = 0
        var read = ReadState.idle
        var write = WriteState.idle
        /// The other side finished: shut our write side once `queue` is sent.
        var shutdownWanted = false
        /// A mirror that lost bytes of this session (cut, failed): later client bytes count as missed.
        var missing = false
        /// Main after the client failed: like a mirror, it gets what the
        /// client sent before the failure, then SHUT_WR, its replies discarded.
        var flushing = false
        /// Bytes of the session's outgoing PROXY protocol header this leg has
        /// been sent: it owes the rest before any queued byte.
        var proxyHeaderSent = 0
        /// A mirror this session was not chosen for (`-m ADDR@P%`): closed, nothing missed.
        var sampledOut = false
        /// A mirror's batch: when its oldest unsent byte must go out (0:
        /// none waits; `dueNow`: at once).
        var batchDeadlineUs: UInt64 = 0
        /// Turns (mirrors): client bytes ever queued to this leg, and sent.
        var queuedBytesTotal: UInt64 = 0
        var sentBytesTotal: UInt64 = 0
        /// One more than the stream offset up to which the mirror had been
        /// handed our bytes when it last replied (0: it never replied): it
        /// answered every turn that starts before.
        var answeredBeforeBytes: UInt64 = 0
        /// Turn starts recorded for this leg (in `turnStarts`), and the first
        /// one it has not been let past.
        var turnCount = 0
        var turnNext = 0
        /// When the mirror, having been sent all of a turn, must have
        /// answered it (0: not waiting).
        var turnDeadlineUs: UInt64 = 0
        /// The leg waits for answers to the first turns; off once they are
        /// past, or once the mirror let one time out.
        var keepsTurns = false
        var queue: SendQueue

        /// Chunks and bytes the send in flight reads from the front of `queue`.
        var chunksInFlight: Int {
            if case .sending(let chunks, _) = write { chunks } else { 0 }
        }
        var bytesInFlight: Int {
            if case .sending(_, let bytes) = write { bytes } else { 0 }
        }
        /// Our FIN was asked for: nothing more is sent.
        var shutdownIssued: Bool {
            switch write {
            case .shuttingDown, .shutDown: true
            case .idle, .sendingHeader, .sending: false
            }
        }
    }

    /// A leg's read side: at most one receive (or discard) in flight, none
    /// after the peer's EOF.
    enum ReadState: UInt8 {
        /// Nothing in flight: one is asked for when the leg may read.
        case idle
        case receiving
        /// The peer sent EOF: nothing more is read.
        case ended
    }

    /// A leg's write side: at most one send in flight; the header before
    /// any queued byte, and our FIN (SHUT_WR) after the last.
    enum WriteState {
        /// Nothing in flight: what is queued, or the FIN once `shutdownWanted`, goes when kicked.
        case idle
        /// The session's outgoing PROXY protocol header, or its rest.
        case sendingHeader
        /// `chunks` chunks, `bytes` bytes from the front of `queue`.
        case sending(chunks: Int, bytes: Int)
        /// SHUT_WR is in flight.
        case shuttingDown
        /// SHUT_WR completed (whatever its result): nothing more goes out.
        case shutDown
    }

    /// What a completion's result means, decoded once where completions are
    /// dispatched (`handle`), the normal outcomes apart from the errors.
    enum Outcome {
        /// A receive or send moved this many bytes (> 0); a connect or
        /// shutdown succeeded (0).
        case done(Int)
        /// A receive found the peer's EOF; a send that moved nothing.
        case endOfStream
        /// A receive found no free slot (ENOBUFS).
        case noBuffer
        /// Cancelled (ECANCELED), or its timeout passed first (ETIME).
        case cancelled(errno: Int32)
        case failed(errno: Int32)

        /// A receive's or send's result: 0 is the end of the stream.
        @inline(__always)
        init(transfer result: Int32) {
            self = result > 0 ? .done(Int(result)) : result == 0 ? .endOfStream : Self(error: result)
        }

        /// A connect's or shutdown's result: 0 is success.
        @inline(__always)
        init(status result: Int32) {
            self = result >= 0 ? .done(Int(result)) : Self(error: result)
        }

        private init(error result: Int32) {
            switch -result {
            case ENOBUFS: self = .noBuffer
            case ECANCELED, ETIME: self = .cancelled(errno: -result)
            default: self = .failed(errno: -result)
            }
        }

        var succeeded: Bool {
            if case .done = self { true } else { false }
        }

        /// The error's number (0 for the normal outcomes).
        var errno: Int32 {
            switch self {
            case .done, .endOfStream: 0
            case .noBuffer: ENOBUFS
            case .cancelled(let code), .failed(let code): code
            }
        }
    }

    /// The most chunks one gathered send takes (the iovec entries a worker
    /// keeps per mirror leg).
    public static let gatherChunksMax = 32
    /// A batch deadline that has passed, whatever the clock says.
    static let dueNow: UInt64 = 1
    /// Bytes and receives that may wait behind a turn a mirror has not
    /// answered; past either, turns are no longer kept for that mirror.
    static let turnHeldBytesMax = 16 * 1024
    static let turnHeldChunksMax = 4

    public let index: UInt32
    // The state other modules read is stored privately and read through
    // computed properties: Swift checks every access to a class's stored
    // `var` that other modules can see at run time (swift_beginAccess), while
    // it proves a private one's accesses exclusive when it compiles the
    // module. Per request, that was most of the proxy's instructions
    // (BENCHMARKS.md, "Exclusivity checks on the hot path").
    private var currentGeneration: UInt16 = 0
    private var active = false
    private var ending = false
    private var waitsForBuffers = false
    private var awaitsProxyHeader = false
    public var generation: UInt16 { currentGeneration }
    public var isActive: Bool { active }
    /// The client's session is over (both directions done, or failed); mirrors may still be flushing.
    public var isEnding: Bool { ending }
    public private(set) var endCause: EndCause?
    /// The session asked to be resumed when slots are back.
    public var waitingForBuffers: Bool { waitsForBuffers }
    private var clientToMainDone = false
    private var mainToClientDone = false
    private var lingerDeadlineMs: UInt64 = 0
    /// When a byte last moved between client and main (the idle timeout's clock).
    private var lastActivityMs: UInt64 = 0
    /// `--accept-proxy`: the client's header has not been read whole yet;
    /// main and the mirrors are not connected until it has.
    public var isAwaitingProxyHeader: Bool { awaitsProxyHeader }
    private var proxyHeaderDeadlineMs: UInt64 = 0
    /// A slot holding the first bytes of a header that came in pieces, and how many.
    private var proxyHeaderSlot: UInt32?
    private var proxyHeaderBytes = 0
    /// What main and every mirror get first (`--send-proxy`): written once
    /// per session into memory the session owns, sent from there to each.
    private let proxyHeaderOut: UnsafeMutableRawBufferPointer?
    private var proxyHeaderOutLength = 0
    /// A wake-up of each `SessionTimer` was asked of the IO and has not
    /// come yet. Kept across a restart of the session: the IO calls
    /// whichever generation is there, which checks its own deadlines.
    private var batchWakeRequested = false
    private var turnWakeRequested = false
    /// Main sent bytes since the client's last receive: the client's next
    /// bytes begin a new turn.
    private var mainRepliedSinceClient = false
    /// Turns begun after the client's first, while turns are kept.
    private var turnsBegun = 0
    /// Per mirror leg, the stream offsets at which its kept turns begin:
    /// `limits.mirrorTurns` entries from `turnStarts + leg * mirrorTurns`.
    private let turnStarts: UnsafeMutablePointer<UInt64>
    let legs: UnsafeMutablePointer<LegState>
    /// The legs this session's storage has: the mirror slots the worker was
    /// sized for (`Config.mirrorSlotCount`), fixed at init.
    private let legCapacity: Int
    /// The legs this session uses: those of the configuration it started
    /// with (a reload changes it for sessions that start later).
    private var currentLegCount: Int
    var legCount: Int { currentLegCount }
    /// The settings this session follows, taken from the worker's current
    /// configuration generation at start and kept to its end: a reload
    /// never changes a live session (`ConfigGeneration`).
    private var limits: SessionLimits
    private let context: SessionContext
    /// `--compare`: one per mirror, or nil (then no byte is compared or kept).
    let comparisons: UnsafeMutablePointer<ReplyComparison>?
    /// `--dump-dir`: what this session's streams were, up to `dumpBytes`
    /// each, for the pairs whose replies differ; nil: nothing recorded.
    var recording: SessionRecording?
    /// Whether `recording` is there: fixed at init, so the paths that ask
    /// need no run-time exclusivity check of `recording` when it is not.
    private let records: Bool
    /// With `recording`: the client's address and the one it reached.
    private var recordedAddresses: ProxyAddresses?

    /// Every leg of the session, the client first, then main, then the mirrors.
    private var allLegs: LazyMapSequence<Range<Int>, Leg> {
        (0..<legCount).lazy.map { Leg(rawValue: UInt8(truncatingIfNeeded: $0)) }
    }

    private var mirrorLegs: LazyMapSequence<Range<Int>, Leg> {
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
        currentLegCount = legCapacity
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
            let comparisons = UnsafeMutablePointer<ReplyComparison>.allocate(capacity: limits.mirrorCount)
            for mirror in 0..<limits.mirrorCount {
                (comparisons + mirror).initialize(to: ReplyComparison(window: compareWindows + mirror * windowBytes,
                                                                      windowBytes: windowBytes))
            }
            self.comparisons = comparisons
        } else {
            comparisons = nil
        }
        turnStarts = .allocate(capacity: max(1, legCapacity * limits.mirrorTurns))
        records = limits.dumpBytes > 0 && comparisons != nil
        if records {
            recording = SessionRecording(mirrorCount: limits.mirrorCount, bytesMax: limits.dumpBytes)
        }
    }

    deinit {
        turnStarts.deallocate()
        legs.deinitialize(count: legCapacity)
        legs.deallocate()
        proxyHeaderOut?.deallocate()
        if let comparisons {
            comparisons.deinitialize(count: context.limits.mirrorCount)
            comparisons.deallocate()
        }
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
        currentLegCount = Leg.count(mirrors: limits.mirrorCount)
        currentGeneration &+= 1
        active = true
        ending = false
        endCause = nil
        waitsForBuffers = false
        clientToMainDone = false
        mainToClientDone = false
        lingerDeadlineMs = 0
        lastActivityMs = context.nowMs
        mainRepliedSinceClient = false
        turnsBegun = 0
        for leg in allLegs {
            let queue = legs[leg].queue
            precondition(queue.isEmpty)
            legs[leg] = LegState(queue: queue)
            legs[leg].keepsTurns = leg.isMirror && limits.mirrorTurns > 0
        }
        if let comparisons {
            for mirror in 0..<limits.mirrorCount { comparisons[mirror].reset() }
        }
        if records {
            recording!.reset(nowUs: context.nowUs)
            recordedAddresses = nil
        }
        let stats = context.stats
        stats.sessionsAccepted.bump()
        stats.sessionsActive.bump()
        legs[.client].fd = clientFD
        legs[.client].phase = .open
        proxyHeaderOutLength = 0
        proxyHeaderSlot = nil
        proxyHeaderBytes = 0

        if limits.acceptProxy {
            // Main and the mirrors wait for the header: they get its client's
            // address, and a connection without one never reaches them.
            awaitsProxyHeader = true
            context.sessionsAwaitingProxyHeader += 1
            proxyHeaderDeadlineMs = context.nowMs + UInt64(limits.proxyHeaderTimeoutMs)
            armReceive(.client, io: io)
            return
        }
        connectUpstream(addresses: limits.sendProxy == nil ? nil : io.addresses(fd: clientFD), io: io)
    }

    /// Connects main and the mirrors, with the header for `addresses` first
    /// when sending one; starts reading the client.
    private func connectUpstream<IO: SessionIO>(addresses: ProxyAddresses?, io: IO) {
        if let version = limits.sendProxy, let proxyHeaderOut {
            proxyHeaderOutLength = ProxyProtocol.encode(version, addresses, into: proxyHeaderOut)
        }
        if records { recordedAddresses = addresses ?? io.addresses(fd: legs[.client].fd) }
        let stats = context.stats
        let mainFD = io.openSocket(for: .main)
        guard mainFD >= 0 else {
            context.problems.mainConnectFailed(errno: mainFD < -1 ? -mainFD : Glibc.errno)
            fail(.mainConnectFailure, io: io)
            return
        }
        connect(leg: .main, fd: mainFD, timeoutMs: limits.mainConnectTimeoutMs, io: io)

        for mirror in 0..<limits.mirrorCount {
            let leg = Leg.mirror(mirror)
            let mirrorStats = stats.mirrors[mirror]
            guard limits.mirrorSlotsAbsent & (1 << UInt64(mirror)) == 0 else {
                // A mirror slot this session's configuration does not use
                // (removed, or not yet taken): like a session not sampled, uncounted.
                legs[leg].phase = .closed
                legs[leg].sampledOut = true
                comparisons?[mirror].abandon()
                continue
            }
            guard context.mirrorIsSampled(mirror, limits) else {
                mirrorStats.sessionsSampledOut.bump()
                legs[leg].phase = .closed
                legs[leg].sampledOut = true
                comparisons?[mirror].abandon()
                continue
            }
            guard context.mirrorIsTried(mirror) else {
                mirrorStats.sessionsSkipped.bump()
                legs[leg].phase = .closed
                legs[leg].missing = true
                comparisons?[mirror].abandon()
                continue
            }
            let fd = io.openSocket(for: leg)
            guard fd >= 0 else {
                mirrorStats.connectFailures.bump()
                legs[leg].phase = .closed
                legs[leg].missing = true
                comparisons?[mirror].abandon()
                continue
            }
            connect(leg: leg, fd: fd, timeoutMs: limits.mirrorConnectTimeoutMs, io: io)
        }
        armReceive(.client, io: io)
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
        case .accept, .acceptCancel, .connectTimeout, .cancel, .close, .tlsRecv, .tlsSend:
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
        waitsForBuffers = false
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

    private func armReceive<IO: SessionIO>(_ leg: Leg, io: IO) {
        guard legs[leg].phase == .open, legs[leg].read == .idle else { return }
        if leg.isMirror, let comparisons, comparisons[leg.mirrorIndex].isOpen || recordingWants(leg) {
            // `--compare`: the mirror's replies are read into a slot to be
            // compared; not while they lead main's past the verbatim window
            // (`mirrorShouldWait`): main's next bytes read them again.
            if comparisons[leg.mirrorIndex].mirrorShouldWait(forBytes: context.pool.slotSize) { return }
            legs[leg].read = .receiving
            legs[leg].inFlight &+= 1
            io.recv(fd: legs[leg].fd, tag: tag(.recv, leg))
            return
        }
        if leg == .main, legs[leg].flushing, let comparisons, anyOpen(comparisons) {
            // `--compare`: main's replies after the client failed are still
            // compared with the mirrors' (the servers' streams, whoever read them).
            legs[leg].read = .receiving
            legs[leg].inFlight &+= 1
            io.recv(fd: legs[leg].fd, tag: tag(.recv, leg))
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
            legs[leg].read = .receiving
            legs[leg].inFlight &+= 1
            io.recv(fd: legs[leg].fd, tag: tag(.recv, leg))
            return
        }
        // Back-pressure: read from one side only while the other side's queue has room.
        let peer = leg == .client ? Leg.main : Leg.client
        let peerPhase = legs[peer].phase
        guard peerPhase == .open || peerPhase == .connecting,
              legs[peer].queue.count < limits.readAheadChunks else { return }
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
            if legs[leg].flushing, let comparisons {
                compare(.main, slot: slot, length: length, comparisons)
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
            mainRepliedSinceClient = true
            context.stats.bytesMainToClient.bump(length)
            if let comparisons { compare(.main, slot: slot, length: length, comparisons) }
            legs[.client].queue.append(slot: slot, length: length)
            kickSend(.client, io: io)
            if comparisons != nil { resumeMirrorReplies(io: io) }
        }
        armReceive(leg, io: io)
    }

    /// Main's stream moved (or ended): mirrors whose replies waited for it
    /// (`mirrorShouldWait`) read again.
    private func resumeMirrorReplies<IO: SessionIO>(io: IO) {
        for leg in mirrorLegs where legs[leg].read == .idle && legs[leg].phase == .open { armReceive(leg, io: io) }
    }

    /// A receive on the client or main that brought no bytes: EOF, no
    /// free slot, or an error.
    private func receivedNothing<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        if legs[leg].flushing {
            if let comparisons {
                mainFlushEnded(outcome, comparisons)
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
                waitsForBuffers = true
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
            recording!.append(Leg.client.index, UnsafeRawBufferPointer(start: context.pool.pointer(slot) + offset, count: length),
                              nowUs: context.nowUs)
        }
        // Main first: its send goes into the ring ahead of the mirrors',
        // so the client's request never waits behind a mirror's send (each
        // loopback send also wakes its reader).
        legs[.main].queue.append(slot: slot, offset: offset, length: length)
        kickSend(.main, io: io)
        // Bytes after main replied begin a new turn (see "Turns").
        var newTurn = false
        if mainRepliedSinceClient {
            mainRepliedSinceClient = false
            if turnsBegun < limits.mirrorTurns {
                turnsBegun += 1
                newTurn = true
            }
        }
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
            if newTurn && legs[leg].keepsTurns {
                turnStarts[leg.index &* limits.mirrorTurns &+ legs[leg].turnCount] = legs[leg].queuedBytesTotal
                legs[leg].turnCount &+= 1
            }
            legs[leg].queuedBytesTotal &+= UInt64(length)
            legs[leg].queue.append(slot: slot, offset: offset, length: length)
            if legs[leg].batchDeadlineUs == 0 {
                legs[leg].batchDeadlineUs = context.nowUs &+ UInt64(limits.mirrorBatchDelayUs)
            }
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
            if let comparisons {
                for mirror in 0..<limits.mirrorCount { comparisons[mirror].end(.main) }
                resumeMirrorReplies(io: io)
            }
            legs[.client].shutdownWanted = true
            kickSend(.client, io: io)
        }
    }

    // MARK: - Comparing replies (`--compare`)

    /// Bytes of main's or a mirror's reply stream, in `slot`, go to the
    /// comparison of every mirror (main's) or of that mirror.
    private func compare(_ stream: ReplyComparison.Stream, slot: UInt32, length: Int,
                         _ comparisons: UnsafeMutablePointer<ReplyComparison>, mirror: Int = 0) {
        let bytes = UnsafeRawBufferPointer(start: context.pool.pointer(slot), count: length)
        if records {
            recording!.append(stream == .mirror ? Leg.mirror(mirror).index : Leg.main.index, bytes, nowUs: context.nowUs)
        }
        if stream == .mirror {
            comparisons[mirror].append(.mirror, bytes)
            return
        }
        for mirror in 0..<limits.mirrorCount { comparisons[mirror].append(.main, bytes) }
    }

    /// `--dump-dir`: the mirror's replies are still read (into slots) to be
    /// recorded, after its verdict is decided, until its recording is full.
    private func recordingWants(_ leg: Leg) -> Bool {
        guard records, let recording else { return false }
        return recording.streams[leg.index].bytes.count < recording.bytesMax
    }

    /// Whether any mirror's comparison still takes bytes.
    private func anyOpen(_ comparisons: UnsafeMutablePointer<ReplyComparison>) -> Bool {
        for mirror in 0..<limits.mirrorCount where comparisons[mirror].isOpen { return true }
        return false
    }

    /// A receive on main while it flushes ended without bytes: its EOF ends
    /// main's stream; no free slot gives the comparisons up (main's
    /// replies are then discarded, as without `--compare`).
    private func mainFlushEnded(_ outcome: Outcome, _ comparisons: UnsafeMutablePointer<ReplyComparison>) {
        for mirror in 0..<limits.mirrorCount {
            switch outcome {
            case .endOfStream: comparisons[mirror].end(.main)
            case .noBuffer: comparisons[mirror].abandon()
            case .done, .cancelled, .failed: break
            }
        }
    }

    /// A mirror's reply read into a slot (`--compare`): compared, its slot
    /// given back at once, then handled as a discarded reply.
    private func mirrorReplied<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, slot: UInt32?, io: IO) {
        let mirror = leg.mirrorIndex
        if let slot {
            context.pool.adopt(slot)
            if case .done(let length) = outcome, let comparisons {
                compare(.mirror, slot: slot, length: length, comparisons, mirror: mirror)
            }
            legs[leg].read = .idle
            releaseSlot(slot, from: leg, io: io)
        }
        if case .noBuffer = outcome {
            // No free slot: main's path comes first, so this pair is given up
            // (incomplete) and the mirror's replies are discarded from now on.
            legs[leg].read = .idle
            comparisons?[mirror].abandon()
            armReceive(leg, io: io)
            return
        }
        discarded(leg, outcome, io: io)
    }

    /// Each mirror's verdict, once its session is over (every leg closed):
    /// exactly one per (session, mirror) the mirror was chosen for.
    private func recordVerdicts(_ comparisons: UnsafeMutablePointer<ReplyComparison>) {
        for mirror in 0..<limits.mirrorCount where !legs[.mirror(mirror)].sampledOut {
            let comparison = comparisons[mirror]
            context.stats.mirrors[mirror].comparisons.record(comparison.verdict,
                                                             divergenceOffset: comparison.divergenceOffset)
            switch comparison.verdict {
            case .diverged, .shorter, .longer:
                guard let recording, let sink = context.dumpSink else { continue }
                // A copy: the recording's memory stays with the slot's next session.
                sink.submit(DumpRequest(mirror: mirror, verdict: comparison.verdict,
                                        divergenceOffset: comparison.divergenceOffset,
                                        clientAddresses: recordedAddresses, startUs: recording.startUs,
                                        endUs: context.nowUs, client: recording.streams[Leg.client.index],
                                        main: recording.streams[Leg.main.index],
                                        mirrorReplies: recording.streams[Leg.mirror(mirror).index]))
            case .match, .incomplete:
                continue
            }
        }
    }

    private func discarded<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
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
            if legs[leg].keepsTurns {
                // It answered what it had been handed so far.
                legs[leg].answeredBeforeBytes = legs[leg].sentBytesTotal &+ UInt64(legs[leg].bytesInFlight) &+ 1
                kickSend(leg, io: io)
            }
            armReceive(leg, io: io)
        case .endOfStream:
            // The mirror finished writing. Once ours is shut too, it is done;
            // before that it may still read, so keep sending.
            comparisons?[leg.mirrorIndex].end(.mirror)
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

    /// Bytes from a client whose header is not yet whole: parse it (joining
    /// pieces in the first piece's slot), then connect main and the mirrors
    /// and forward what followed the header in the same receive.
    private func receivedProxyHeader<IO: SessionIO>(slot: UInt32, length: Int, io: IO) {
        let pool = context.pool
        let before = proxyHeaderBytes
        let parseStart: UnsafeMutableRawPointer
        if let held = proxyHeaderSlot {
            let taken = min(length, ProxyProtocol.headerBytesMax - before)
            (pool.pointer(held) + before).copyMemory(from: pool.pointer(slot), byteCount: taken)
            proxyHeaderBytes += taken
            parseStart = pool.pointer(held)
        } else {
            proxyHeaderBytes = min(length, ProxyProtocol.headerBytesMax)
            parseStart = pool.pointer(slot)
        }
        switch ProxyProtocol.parse(UnsafeRawBufferPointer(start: parseStart, count: proxyHeaderBytes)) {
        case .incomplete:
            // Shorter than the longest header (or parse would have refused it): keep the piece.
            if proxyHeaderSlot == nil {
                proxyHeaderSlot = slot
            } else {
                releaseSlot(slot, from: .client, io: io)
            }
            armReceive(.client, io: io)
        case .invalid(let failure):
            releaseSlot(slot, from: .client, io: io)
            refuseProxyHeader(.invalid(failure), io: io)
        case .complete(let headerLength, let addresses):
            stopAwaitingProxyHeader(io: io)
            connectUpstream(addresses: addresses ?? io.addresses(fd: legs[.client].fd), io: io)
            let headerPart = headerLength - before
            if length > headerPart && !isEnding {
                forwardFromClient(slot: slot, offset: headerPart, length: length - headerPart, io: io)
            } else {
                releaseSlot(slot, from: .client, io: io)
            }
        }
    }

    private func stopAwaitingProxyHeader<IO: SessionIO>(io: IO) {
        guard isAwaitingProxyHeader else { return }
        awaitsProxyHeader = false
        context.sessionsAwaitingProxyHeader -= 1
        if let held = proxyHeaderSlot {
            proxyHeaderSlot = nil
            releaseSlot(held, from: .client, io: io)
        }
    }

    /// A client whose header is not whole by its deadline is closed.
    public func checkProxyHeaderDeadline<IO: SessionIO>(io: IO) {
        guard isActive, isAwaitingProxyHeader, context.nowMs >= proxyHeaderDeadlineMs else { return }
        refuseProxyHeader(.timedOut, io: io)
    }

    /// Ends the session of a client whose header was refused, and tells the log whose and why.
    private func refuseProxyHeader<IO: SessionIO>(_ refusal: ProblemLog.HeaderRefusal, io: IO) {
        guard !isEnding else { return }
        context.problems.proxyHeaderRefused(refusal, peer: io.addresses(fd: legs[.client].fd)?.source)
        fail(.badProxyHeader, io: io)
    }

    // MARK: - Sending

    private func kickSend<IO: SessionIO>(_ leg: Leg, io: IO) {
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
        if legs[leg].keepsTurns && !legs[leg].queue.isEmpty {
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

    /// A mirror is a throughput leg: its queued chunks go out together in
    /// one gathered send once `mirrorBatchBytes` wait, the oldest has waited
    /// `mirrorBatchDelayUs`, or the stream ends; until then the session asks
    /// to be woken at the deadline. Its reader wakes once per batch instead
    /// of once per client receive.
    private func kickMirrorBatch<IO: SessionIO>(_ leg: Leg, turnLimit: Int, io: IO) {
        let limits = self.limits
        let queue = legs[leg].queue
        if legs[leg].batchDeadlineUs == 0 {
            legs[leg].batchDeadlineUs = context.nowUs &+ UInt64(limits.mirrorBatchDelayUs)
        }
        let deadlineUs = legs[leg].batchDeadlineUs
        // The end of a kept turn is due at once: the client has waited for main's answer to it.
        guard legs[leg].shutdownWanted || queue.bytes >= limits.mirrorBatchBytes || context.nowUs >= deadlineUs
                || turnLimit < queue.bytes else {
            if !batchWakeRequested {
                batchWakeRequested = true
                io.wake(session: index, atUs: deadlineUs, for: .mirrorBatch)
            }
            return
        }
        var chunks = 0
        var length = 0
        while chunks < min(queue.count, Self.gatherChunksMax) {
            let next = Int(queue.chunk(at: chunks).length)
            guard length &+ next <= turnLimit else { break }
            length &+= next
            chunks &+= 1
        }
        // What this send leaves behind is due as soon as it completes (a
        // kept turn's start waits for the mirror's answer instead).
        legs[leg].batchDeadlineUs = chunks == queue.count ? 0 : Self.dueNow
        legs[leg].write = .sending(chunks: chunks, bytes: length)
        legs[leg].inFlight &+= 1
        if chunks == 1 {
            let chunk = queue.chunk(at: 0)
            io.send(fd: legs[leg].fd, slot: chunk.slot, offset: Int(chunk.offset), length: length, tag: tag(.send, leg))
        } else {
            io.sendGathered(fd: legs[leg].fd, queue: queue, chunks: chunks, length: length, tag: tag(.send, leg))
        }
    }

    // MARK: - Turns

    // A protocol may depend on the order of the conversation's turns: with
    // libpq's defaults the client sends an 8-byte SSLRequest, waits for main's
    // "N", then its startup message; a PostgreSQL mirror that gets both before
    // its backend has read the first refuses the session ("received
    // unencrypted data after SSL request"). So for the first
    // `mirrorTurns` turns (client bytes after main replied), a mirror gets a
    // turn only once it has answered the one before (a discard with bytes after
    // that turn was handed to it), or after `mirrorTurnTimeoutUs`; a mirror
    // that lets a turn time out, or lets more than `turnHeldBytesMax` or
    // `turnHeldChunksMax` pile up behind one, is not waited for again in the
    // session. Then its sends batch freely. Main never waits for any of it.

    /// The bytes this mirror may be sent now: up to the start of the first
    /// kept turn it has not been let past (0: it waits for an answer).
    private func mirrorTurnLimit<IO: SessionIO>(_ leg: Leg, io: IO) -> Int {
        while legs[leg].turnNext < legs[leg].turnCount {
            let start = turnStarts[leg.index &* limits.mirrorTurns &+ legs[leg].turnNext]
            let sent = legs[leg].sentBytesTotal
            if start > sent { return Int(start &- sent) }
            // All of the previous turn is sent: has the mirror answered it?
            if legs[leg].answeredBeforeBytes > start {
                legs[leg].turnNext &+= 1
                legs[leg].turnDeadlineUs = 0
                continue
            }
            if legs[leg].turnDeadlineUs == 0 {
                legs[leg].turnDeadlineUs = context.nowUs &+ UInt64(limits.mirrorTurnTimeoutUs)
            }
            // Negotiation turns are a few bytes; a stream piling up behind an
            // unanswered turn is not one, and must not pin slots (a mirror
            // that never replies would otherwise hold a fast stream for the
            // whole timeout).
            let held = legs[leg].queue
            if context.nowUs >= legs[leg].turnDeadlineUs || held.bytes > Self.turnHeldBytesMax
                || held.count > Self.turnHeldChunksMax {
                // No answer in time: this mirror is not waited for again.
                legs[leg].turnNext = legs[leg].turnCount
                stopKeepingTurns(leg, io: io)
                return Int.max
            }
            if !turnWakeRequested {
                turnWakeRequested = true
                io.wake(session: index, atUs: legs[leg].turnDeadlineUs, for: .mirrorTurn)
            }
            return 0
        }
        if turnsBegun >= limits.mirrorTurns { stopKeepingTurns(leg, io: io) }
        return Int.max
    }

    /// The kept turns are past: the mirror's replies are discarded in batches again.
    private func stopKeepingTurns<IO: SessionIO>(_ leg: Leg, io: IO) {
        legs[leg].keepsTurns = false
        legs[leg].turnDeadlineUs = 0
        if !legs[leg].shutdownIssued { io.discardInBatches(fd: legs[leg].fd) }
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
        legs[leg].sentBytesTotal &+= UInt64(length)
        var unconsumed = min(length, sendingBytes)
        while unconsumed > 0, let first = legs[leg].queue.first {
            let part = min(unconsumed, Int(first.length))
            unconsumed &-= part
            if let slot = legs[leg].queue.consume(part) { releaseSlot(slot, from: leg, io: io) }
        }
        // A short send: the rest of what went together is due now.
        if length < sendingBytes { legs[leg].batchDeadlineUs = Self.dueNow }
        kickSend(leg, io: io)
        // The queue has room again: the other side may be read.
        if leg == .main { armReceive(.client, io: io) }
        else if leg == .client { armReceive(.main, io: io) }
    }

    private func releaseSlot<IO: SessionIO>(_ slot: UInt32, from leg: Leg, io: IO) {
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
    private func dropQueue<IO: SessionIO>(_ leg: Leg, io: IO) {
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

    // MARK: - Connecting

    private func connect<IO: SessionIO>(leg: Leg, fd: Int32, timeoutMs: Int, io: IO) {
        legs[leg].fd = fd
        legs[leg].phase = .connecting
        legs[leg].inFlight &+= 1
        io.connect(fd: fd, leg: leg, timeoutMs: timeoutMs, tag: tag(.connect, leg),
                   timeoutTag: tag(.connectTimeout, leg))
    }

    private func connected<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        guard legs[leg].phase == .connecting else { return }
        if outcome.succeeded {
            legs[leg].phase = .open
            if leg.isMirror {
                context.stats.mirrors[leg.mirrorIndex].sessionsMirrored.bump()
                context.mirrorConnected(leg.mirrorIndex)
            }
            kickSend(leg, io: io)
            armReceive(leg, io: io)
            return
        }
        if leg == .main {
            if legs[leg].flushing {
                closeLeg(leg, io: io)
            } else {
                if case .cancelled = outcome {
                    context.problems.mainConnectTimedOut()
                } else {
                    context.problems.mainConnectFailed(errno: outcome.errno)
                }
                fail(.mainConnectFailure, io: io)
            }
            return
        }
        let mirror = leg.mirrorIndex
        if case .cancelled = outcome {
            context.stats.mirrors[mirror].connectTimeouts.bump()
        } else {
            context.stats.mirrors[mirror].connectFailures.bump()
        }
        context.mirrorConnectFailed(mirror, errno: outcome.errno)
        context.stats.mirrors[mirror].bytesMissed.bump(legs[leg].queue.bytes)
        legs[leg].missing = true
        comparisons?[mirror].abandon()
        closeLeg(leg, io: io)
    }

    // MARK: - Ending

    /// Disconnects a mirror for the rest of this session; what it had not
    /// been sent counts as missed, and so will what the client sends later.
    private func cutMirror<IO: SessionIO>(_ leg: Leg, _ cause: MirrorCut, alsoMissed: Int = 0, io: IO) {
        guard legs[leg].phase != .closed, legs[leg].phase != .closing else { return }
        let stats = context.stats.mirrors[leg.mirrorIndex]
        switch cause {
        case .lag: stats.sessionsCutForLag.bump()
        case .poolShare: stats.sessionsCutForPoolShare.bump()
        case .failure: break
        }
        stats.bytesMissed.bump(legs[leg].queue.bytes + alsoMissed)
        legs[leg].missing = true
        comparisons?[leg.mirrorIndex].abandon()
        closeLeg(leg, io: io)
    }

    /// The client's session failed: close the client and main at once; the
    /// mirrors flush what they have, shut down and linger.
    private func fail<IO: SessionIO>(_ cause: EndCause, io: IO) {
        guard !isEnding else { return }
        end(cause, io: io)
    }

    private func end<IO: SessionIO>(_ cause: EndCause, io: IO) {
        ending = true
        context.sessionsEnding += 1
        endCause = cause
        let stats = context.stats
        switch cause {
        case .completed: stats.sessionsCompleted.bump()
        case .clientError: stats.sessionsEndedByClientError.bump()
        case .mainConnectFailure: stats.sessionsEndedByMainConnectFailure.bump()
        case .mainError: stats.sessionsEndedByMainError.bump()
        case .idleTimeout: stats.sessionsEndedByIdleTimeout.bump()
        case .aborted: stats.sessionsAborted.bump()
        case .badProxyHeader: stats.sessionsEndedByBadProxyHeader.bump()
        }
        stopAwaitingProxyHeader(io: io)
        lingerDeadlineMs = context.nowMs + UInt64(limits.mirrorLingerMs)
        closeLeg(.client, io: io)
        let mainPhase = legs[.main].phase
        if cause == .clientError && (mainPhase == .open || mainPhase == .connecting) && !legs[.main].shutdownIssued {
            // The client is gone, but main still gets every byte the client
            // sent before it failed (as the mirrors do), then our FIN; its
            // replies are discarded, and the linger bounds all of it.
            legs[.main].flushing = true
            legs[.main].shutdownWanted = true
            kickSend(.main, io: io)
            armReceive(.main, io: io)
        } else {
            // Main's stream ends here unfinished (unless its EOF came): its
            // pairs cannot be decided, and a mirror that waited for main
            // (`mirrorShouldWait`) reads on, to its EOF.
            let mainUnfinished = cause != .completed && legs[.main].read != .ended
            closeLeg(.main, io: io)
            if mainUnfinished, let comparisons {
                for mirror in 0..<context.limits.mirrorCount { comparisons[mirror].abandon() }
                resumeMirrorReplies(io: io)
            }
        }
        // Mirrors, connected or still connecting, get the rest of what they
        // are owed, then shut down; `tick` closes them after the linger time.
        for leg in mirrorLegs {
            if legs[leg].phase == .idle {
                // Never started (main failed first): nothing to flush.
                closeLeg(leg, io: io)
                continue
            }
            legs[leg].shutdownWanted = true
            kickSend(leg, io: io)
        }
        settleSession()
    }

    private func closeLeg<IO: SessionIO>(_ leg: Leg, io: IO) {
        switch legs[leg].phase {
        case .closing, .closed: return
        case .idle:
            legs[leg].phase = .closed
            settleSession()
            return
        case .connecting, .open:
            legs[leg].phase = .closing
        }
        dropQueue(leg, io: io)
        if legs[leg].inFlight > 0 {
            // Once: a closing leg is never closed again.
            io.cancel(fd: legs[leg].fd, tag: tag(.cancel, leg))
        } else {
            finishClose(leg, io: io)
        }
    }

    /// After each completion: a closing leg with nothing in flight is closed.
    private func settle<IO: SessionIO>(_ leg: Leg, io: IO) {
        if legs[leg].phase == .closing && legs[leg].inFlight == 0 {
            finishClose(leg, io: io)
        }
    }

    private func finishClose<IO: SessionIO>(_ leg: Leg, io: IO) {
        dropQueue(leg, io: io)
        io.close(fd: legs[leg].fd, tag: tag(.close, leg))
        legs[leg].fd = -1
        legs[leg].phase = .closed
        settleSession()
    }

    /// The session is over when every leg is closed.
    private func settleSession() {
        guard isActive, isEnding else { return }
        for leg in allLegs where legs[leg].phase != .closed { return }
        active = false
        waitsForBuffers = false
        if let comparisons { recordVerdicts(comparisons) }
        context.sessionsEnding -= 1
        context.stats.sessionsActive.drop()
    }
}

extension UnsafeMutablePointer where Pointee == Session.LegState {
    /// A session's state of `leg` (`Session.legs`).
    @inline(__always)
    subscript(leg: Leg) -> Session.LegState {
        unsafeAddress { UnsafePointer(self + leg.index) }
        nonmutating unsafeMutableAddress { self + leg.index }
    }
}
