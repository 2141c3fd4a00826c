import Glibc
import Logging
import Platform
import Ring

/// A completion as the worker's logic takes it, from whichever backend.
public struct WorkerCompletion: Sendable {
    public var tag: CompletionTag
    public var result: Int32
    /// The pool slot the backend received into, if any.
    public var selectedBuffer: UInt32?
    /// For the accept: more clients come on the same request.
    public var hasMore: Bool

    public init(tag: CompletionTag, result: Int32, selectedBuffer: UInt32? = nil, hasMore: Bool = false) {
        self.tag = tag
        self.result = result
        self.selectedBuffer = selectedBuffer
        self.hasMore = hasMore
    }
}

/// What the worker's logic needs of its backend beyond the sessions'
/// operations: accepting clients, the buffers lent out for receives, and
/// the socket facts the loop guard asks about. `Worker` implements it over
/// io_uring; the tests implement it with a scripted fake.
public protocol WorkerBackend: SessionIO {
    /// Start accepting: each client arrives as a completion tagged
    /// `WorkerCore.acceptTag` (its descriptor, or a negated errno), with
    /// `hasMore` false once the accept has ended and must be armed again.
    /// False when there is no listener any more.
    func armAccept() -> Bool
    /// Stop the accept armed (on stop); its completions may still come.
    func cancelAccept()
    func closeListener()
    /// Whether a receive that found no buffer can get one now.
    var buffersLent: Bool { get }
    /// A completion brought `slot`: it is no longer lent out.
    func bufferTaken(_ slot: UInt32)
    /// A new client's socket, and the session about to start on it.
    func admit(fd: Int32, session: Session)
    /// A client refused at once: close it.
    func refuse(fd: Int32)
    /// The loop guard (`LoopGuard`): whether the accepted `fd` is one of our
    /// own connections come back (it is then refused and logged)...
    func isLoop(acceptedFD fd: Int32) -> Bool
    /// ... whether a connect of `fd` for `leg` that completed with
    /// `result` turned out to arrive at our own listener (it then fails
    /// with ELOOP); and whether either needs asking now (almost never).
    func connectLooped(fd: Int32, leg: Leg, result: Int32) -> Bool
    var loopCheckNeeded: Bool { get }
    /// Once a tick, for the backend's own gauges and logs.
    func tick(nowMs: UInt64)
    /// A descriptor opened outside the backend that the worker will receive
    /// on (the TLS handshake thread's wake socket); false when it cannot be.
    func watch(fd: Int32) -> Bool
}

extension WorkerBackend {
    /// A completion-based backend needs nothing before a receive.
    public func watch(fd: Int32) -> Bool { true }
}

/// Sessions waiting for a free slot, in arrival order: shared by a worker's
/// logic and its backend (which takes `waitForBuffers` from the sessions).
public final class BufferWaiters {
    private var indices: [UInt32]
    private var head = 0
    /// Read by the loop once per batch (docs/contributing.md, "Private storage, public reads").
    private var _count = 0
    public var count: Int { _count }

    public init(capacity: Int) { indices = Array(repeating: 0, count: max(1, capacity)) }

    /// One entry per session at most (a session asks once until resumed).
    public func add(_ index: UInt32) {
        guard _count < indices.count else { return }
        indices[(head + _count) % indices.count] = index
        _count += 1
    }

    /// The waiting sessions' indices, first first.
    public var elements: [UInt32] { (0..<count).map { indices[(head + $0) % indices.count] } }

    func next() -> UInt32? {
        guard count > 0 else { return nil }
        defer {
            head = (head + 1) % indices.count
            _count -= 1
        }
        return indices[head]
    }
}

/// Whether a worker is asked to stop: `graceful` lets live sessions finish
/// (within `--drain-timeout`), `immediate` ends them at once.
public enum StopMode: Int, Sendable { case running = 0, graceful = 1, immediate = 2 }

/// The worker's own logic, sans-IO like `Session`: what to do with each
/// completion (accept a client, or hand it to its session through the
/// table), the sessions waiting for buffers, the tick (idle and PROXY
/// header deadlines, mirrors lingering, the stop), and the stop itself.
/// The thread's loop (`Worker`) waits for completions and hands them here,
/// with its backend as `io`, as a `Session` takes its IO: per call, so that
/// nothing here holds the backend that holds this.
public final class WorkerCore<Backend: WorkerBackend> {
    public static var tickMs: UInt64 { 100 }
    /// After an accept error (out of descriptors or memory), clients wait in
    /// the listen queue this long before the accept is armed again.
    public static var acceptPauseMs: UInt64 { 100 }
    /// How often sessions are checked against the idle timeout.
    static var idleCheckMs: UInt64 { 1_000 }
    public static var acceptTag: CompletionTag {
        CompletionTag(kind: OperationKind.accept.rawValue, leg: 0, generation: 0, session: 0)
    }
    public static var acceptCancelTag: CompletionTag {
        CompletionTag(kind: OperationKind.acceptCancel.rawValue, leg: 0, generation: 0, session: 0)
    }

    public let context: SessionContext
    public let table: SessionTable
    public let waiters: BufferWaiters
    public let timers: SessionTimers
    private let stats: WorkerStats
    private let logger: Logger
    /// Sessions are checked against their idle timeout while any
    /// configuration since start had one (each session checks its own).
    private var idleTimeoutMs: Int
    private let drainTimeoutMs: Int
    /// The mirror health log is the process's: every worker's counters.
    private let allStats: [WorkerStats]
    /// Per mirror slot (`ConfigGeneration`), for the health log.
    private var mirrorNames: [String]

    // Read by the loop once per batch (docs/contributing.md, "Private storage, public reads").
    private var _acceptArmed = false
    private var _stopping = false
    private var _nextTickMs: UInt64 = 0
    public var acceptArmed: Bool { _acceptArmed }
    private var acceptPausedUntilMs: UInt64 = 0
    public var stopping: Bool { _stopping }
    private var aborted = false
    private var drainDeadlineMs: UInt64 = 0
    public var nextTickMs: UInt64 { _nextTickMs }
    private var nextIdleCheckMs: UInt64 = 0
    /// `--tls-cert`: the context new clients' handshakes use, and, once
    /// started, the layer the sessions' IO goes through (`TLSSessionIO`).
    private var tlsContexts: TLSSessionIO<Backend>.Contexts
    /// Private, so that its reads (each round, each wait) are proven
    /// exclusive when the module compiles, not checked at run time
    /// (docs/contributing.md, "Private storage, public reads").
    private var tls: TLSSessionIO<Backend>?
    private var rejectLog = RateLimitedLog(intervalMs: 10_000)
    private var acceptErrorLog = RateLimitedLog(intervalMs: 5_000)
    private var unknownCompletionLogged = false

    public init(context: SessionContext, table: SessionTable, waiters: BufferWaiters, timers: SessionTimers,
                idleTimeoutMs: Int, drainTimeoutMs: Int, stats: WorkerStats, allStats: [WorkerStats],
                mirrorNames: [String], tls: TLSSessionIO<Backend>.Contexts = .init(),
                logger: Logger = Logger(label: "duplicator")) {
        self.tlsContexts = tls
        self.context = context
        self.table = table
        self.waiters = waiters
        self.timers = timers
        self.idleTimeoutMs = idleTimeoutMs
        self.drainTimeoutMs = drainTimeoutMs
        self.stats = stats
        self.allStats = allStats
        self.mirrorNames = mirrorNames
        self.logger = logger
    }

    /// Every session has ended and nothing more will be accepted: the loop may end.
    public var isFinished: Bool { stopping && table.activeCount == 0 && !acceptArmed }

    public func start(io: Backend) {
        _nextTickMs = context.nowMs + Self.tickMs
        if !tlsContexts.isEmpty {
            tls = TLSSessionIO(backend: io, table: table, context: context, contexts: tlsContexts, logger: logger)
            tls?.adopt(mirrorNames: mirrorNames)
        }
        armAccept(io: io)
    }

    // MARK: - Completions

    /// What to do with one completion: the accept's, or a session's.
    @inline(__always)
    public func deliver(_ completion: WorkerCompletion, io: Backend) {
        let tag = completion.tag
        guard let kind = OperationKind(rawValue: tag.kind) else {
            unknownCompletion(completion, io: io)
            return
        }
        switch kind {
        case .accept:
            accepted(completion, io: io)
            return
        case .acceptCancel:
            return
        case .tlsRecv, .tlsSend, .tlsStepped:
            if let slot = completion.selectedBuffer { io.bufferTaken(slot) }
            if let tls {
                tls.completed(kind, tag: tag, result: completion.result, slot: completion.selectedBuffer)
            } else if let slot = completion.selectedBuffer {
                io.recycle(slot: slot)
            }
            return
        default:
            break
        }
        if let slot = completion.selectedBuffer { io.bufferTaken(slot) }
        var result = completion.result
        if kind == .connect && io.loopCheckNeeded, let session = table.session(for: tag) {
            let leg = Leg(tag)
            if io.connectLooped(fd: session.legs[leg].fd, leg: leg, result: result) { result = -ELOOP }
        }
        if let tls {
            // A TLS leg's bytes are ciphertext: decrypted before the session
            // sees them; its connect is done, to the session, after its handshake.
            if kind == .recv && tls.isEncrypted(Leg(tag)) {
                tls.received(tag: tag, result: result, slot: completion.selectedBuffer)
                return
            }
            if kind == .connect && tls.isEncrypted(Leg(tag)) {
                tls.connected(tag: tag, result: result)
                return
            }
            if case .stale = table.deliver(kind, tag: tag, result: result,
                                           selectedBuffer: completion.selectedBuffer, io: tls),
               let slot = completion.selectedBuffer {
                io.recycle(slot: slot)
            }
            return
        }
        if case .stale = table.deliver(kind, tag: tag, result: result, selectedBuffer: completion.selectedBuffer, io: io),
           let slot = completion.selectedBuffer {
            // A late completion of a session that has ended: its buffer, if
            // one was picked for it, goes straight back.
            io.recycle(slot: slot)
        }
    }

    /// After a batch of completions: the sessions' timers that are due
    /// (`context.nowUs`) fire, and the sessions that waited for buffers
    /// read again, in the order they asked, while any are lent; then, with
    /// `--tls-cert`, the handshakes that wait, within the round's budget.
    public func afterCompletions(io: Backend) {
        if let tls { tls.deliverQueued() }
        if !timers.isEmpty { fireDueTimers(io: io) }
        while io.buffersLent, let index = waiters.next() {
            if let tls {
                table.withSession(at: index) { $0.resumeReceiving(io: tls) }
            } else {
                table.withSession(at: index) { $0.resumeReceiving(io: io) }
            }
        }
        if let tls {
            // Established sessions first: a handshake step holds the thread.
            tls.runHandshakes()
            tls.deliverQueued()
        }
    }

    /// Work waits for the next round (handshake steps beyond a round's
    /// budget): the loop polls instead of sleeping.
    public var hasWorkWaiting: Bool { tls?.hasHandshakeWork ?? false }

    /// Tells the sessions whose mirror deadlines have passed.
    public func fireDueTimers(io: Backend) {
        while let index = timers.batch.popDue(now: context.nowUs) { fire(.mirrorBatch, index, io: io) }
        while let index = timers.turn.popDue(now: context.nowUs) { fire(.mirrorTurn, index, io: io) }
    }

    /// The session may have ended (and its place been taken) since it asked:
    /// it checks its own deadlines; one that ends now is freed.
    private func fire(_ timer: SessionTimer, _ index: UInt32, io: Backend) {
        table.withSession(at: index) { session in
            let wasActive = session.isActive
            if let tls { session.timerFired(timer, io: tls) } else { session.timerFired(timer, io: io) }
            if wasActive && !session.isActive { table.free(session) }
        }
    }

    /// A completion of no operation we submit: count it, say so once, and
    /// give back the buffer that may have been picked for it.
    private func unknownCompletion(_ completion: WorkerCompletion, io: Backend) {
        stats.completionsUnknown.bump()
        if let slot = completion.selectedBuffer {
            io.bufferTaken(slot)
            io.recycle(slot: slot)
        }
        guard !unknownCompletionLogged else { return }
        unknownCompletionLogged = true
        logger.error("a completion of no known operation (tag \(completion.tag.rawValue), result \(completion.result)) was ignored; this is a bug, please report it (further ones are counted in duplicator_completions_unknown_total)")
    }

    // MARK: - Accepting

    private func armAccept(io: Backend) {
        _acceptArmed = io.armAccept()
    }

    private func accepted(_ completion: WorkerCompletion, io: Backend) {
        if completion.result >= 0 {
            let fd = completion.result
            if io.isLoop(acceptedFD: fd) {
                stats.loopsRefused.bump()
                io.refuse(fd: fd)
            } else if !aborted, let session = table.take() {
                // While draining too: a client the kernel handed over before the
                // accept was cancelled has connected (after a handover, the
                // listener lives on in the new process): serve it, not reset it.
                io.admit(fd: fd, session: session)
                if let tls, tls.terminatesClients {
                    // The session starts once its client's handshake is done.
                    tls.begin(fd: fd, session: session)
                } else if let tls {
                    session.start(clientFD: fd, io: tls)
                    if !session.isActive { table.free(session) }
                } else {
                    session.start(clientFD: fd, io: io)
                    if !session.isActive { table.free(session) }
                }
            } else {
                stats.sessionsRejected.bump()
                io.refuse(fd: fd)
                if !stopping && rejectLog.allow(nowMs: context.nowMs) {
                    let note = "refusing clients: this worker's memory bound admits \(Counted.text(table.capacity, "session")) "
                        + "and none is free (--max-memory, --max-sessions)\(rejectLog.suppressedNote)"
                    logger.warning("\(note)")
                }
            }
        } else if !(stopping && completion.result == -ECANCELED) {
            stats.acceptErrors.bump()
            if acceptErrorLog.allow(nowMs: context.nowMs) {
                logger.warning("accept failed: \(SystemCallError.describe(errorNumber: -completion.result))\(acceptErrorLog.suppressedNote)")
            }
        }
        guard !completion.hasMore else { return }
        // The accept ended.
        _acceptArmed = false
        if stopping {
            io.closeListener()
        } else if completion.result < 0 {
            // Out of descriptors or memory: retrying at once would spin a
            // core. Clients wait in the listen queue meanwhile.
            acceptPausedUntilMs = context.nowMs + Self.acceptPauseMs
        } else {
            armAccept(io: io)
        }
    }

    /// A reload: the mirror slots' names, and the idle checks if the new configuration has them.
    func adopt(_ generation: ConfigGeneration) {
        mirrorNames = generation.slotNames
        // The check's pace is the shortest timeout any live session may have.
        let new = generation.config.idleTimeoutMs
        if new > 0 { idleTimeoutMs = idleTimeoutMs == 0 ? new : min(idleTimeoutMs, new) }
        // New clients' handshakes take the reloaded certificate; live streams keep theirs.
        tlsContexts = generation.config.tlsContexts()
        tls?.adopt(tlsContexts)
        tls?.adopt(mirrorNames: mirrorNames)
    }

    // MARK: - Time

    /// Once `nextTickMs` has come: gauges and logs, the stop, the accept
    /// after a pause, and the sessions' deadlines.
    public func tick(stopMode mode: StopMode, io: Backend) {
        _nextTickMs = context.nowMs + Self.tickMs
        io.tick(nowMs: context.nowMs)
        for (index, mirror) in stats.mirrors.enumerated() {
            mirror.backingOff.store(context.mirrorIsBackingOff(index) ? 1 : 0, ordering: .relaxed)
        }
        context.mirrorHealth.log(workers: allStats, names: mirrorNames, nowMs: context.nowMs, logger: logger)
        context.problems.log(nowMs: context.nowMs, logger: logger)
        if mode != .running && !stopping {
            _stopping = true
            drainDeadlineMs = context.nowMs + UInt64(drainTimeoutMs)
            if acceptArmed { io.cancelAccept() } else { io.closeListener() }
        }
        if !stopping && !acceptArmed && context.nowMs >= acceptPausedUntilMs { armAccept(io: io) }
        if stopping && !aborted && (mode == .immediate || context.nowMs >= drainDeadlineMs) {
            aborted = true
            forEachSession(where: { _ in true }) { session in
                if let tls { session.abort(io: tls) } else { session.abort(io: io) }
            }
        }
        if let tls {
            tls.tick(aborting: aborted)
            tickSessions(io: tls)
            tls.deliverQueued()
        } else {
            tickSessions(io: io)
        }
    }

    /// The sessions' deadlines: idle, PROXY header, mirrors lingering.
    private func tickSessions<IO: SessionIO>(io: IO) {
        if idleTimeoutMs > 0 && context.nowMs >= nextIdleCheckMs {
            nextIdleCheckMs = context.nowMs + min(Self.idleCheckMs, UInt64(max(1, idleTimeoutMs / 4)))
            forEachSession(where: { !$0.isEnding }) { $0.checkIdle(io: io) }
        }
        if context.sessionsAwaitingProxyHeader > 0 {
            forEachSession(where: { $0.isAwaitingProxyHeader }) { $0.checkProxyHeaderDeadline(io: io) }
        }
        if context.sessionsEnding > 0 {
            forEachSession(where: { $0.isEnding }) { $0.tick(io: io) }
        }
    }

    /// Runs `body` on each active session that `filter` picks, and frees those that ended.
    @inline(__always)
    private func forEachSession(where filter: (Session) -> Bool, _ body: (Session) -> Void) {
        for session in table.sessions where session.isActive && filter(session) {
            body(session)
            if !session.isActive { table.free(session) }
        }
    }
}
