import Glibc
import Logging
import Ring
import Synchronization
import Platform

/// Asks the workers to stop; shared by the `Proxy` and its workers.
final class WorkerControl: Sendable {
    let stopMode = Atomic<Int>(0)
    let ready = Atomic<Int>(0)
    let exited = Atomic<Int>(0)
    let startErrors = Mutex<[String]>([])
    let setupMode = Mutex<String>("")
    let zeroCopyNote = Mutex<String>("")
    /// The backend the workers run on (never `auto`), and why epoll when it was not asked for.
    let backend = Mutex<(kind: Config.Backend, fallbackReason: String?)?>(nil)
    /// The configuration new sessions start with (`ConfigReload.swift`).
    let generations: ConfigGenerations
    /// What the workers log of main, PROXY headers and dumps (`ProblemLog`).
    let problems = ProblemLog()

    init(generations: ConfigGenerations = ConfigGenerations()) { self.generations = generations }
}

/// One thread, one ring, one listener, one session table: the completion
/// loop, and the io_uring backend of the worker's logic (`WorkerCore`): the
/// operations sessions ask for become SQEs, and each CQE goes to the core.
/// Nothing here is shared with other threads but the counters
/// (`WorkerStats`), the stop request (`WorkerControl`), the loop guard and
/// the mirrors' health.
final class IOUringWorker: KernelBackend {
    static let discardBufferBytes = 4096
    static let discardBytesMax = 1 << 20

    let ring: Ring
    let pool: BufferPool
    let provided: ProvidedBuffers
    let stats: WorkerStats
    let control: WorkerControl
    private let logger: Logger
    private let config: Config
    /// Targets, loop guard records, gathered-send memory: as the epoll backend's.
    let sockets: WorkerSockets
    /// The worker's listeners: one, or several after a handover from a
    /// process that had more workers (each has its own accept queue, and
    /// none may be left without an accept). A multishot accept on each,
    /// tagged with the listener's index; `armedAccepts` has a bit per armed one.
    private let listenerFDs: [Int32]
    private var listenersOpen: Bool
    private var armedAccepts: UInt64 = 0
    private var acceptsCancelled = false
    private let discardBuffer: UnsafeMutableRawPointer
    /// The kernel reads a linked timeout's duration at submission: one
    /// stable copy per duration the sessions ask for (main's and the mirrors').
    private var connectTimeouts: [RingTimeout]
    /// IORING_OP_SENDMSG is there (5.3 and later); without it a gathered send
    /// sends its first chunk, and the session sends the rest as after a short send.
    private let sendMessageSupported: Bool
    /// `--zerocopy`: the zero-copy sends awaiting their notifications (nil:
    /// every send copies), per (session, leg) whether its sends may be
    /// zero-copy (decided when it connects), the smallest such send, and
    /// whether a gathered send may use a registered buffer (Linux 6.15+).
    private let zeroCopy: ZeroCopySends?
    private let zeroCopyLegs: UnsafeMutablePointer<Bool>
    private let legsPerSession: Int
    private let zeroCopyBytesMin: Int
    private let zeroCopyFixedVectored: Bool
    /// When a finished worker stops waiting for notifications (0: not yet finished).
    private var zeroCopyWaitDeadlineMs: UInt64 = 0
    /// The sessions' timers' wake (`SessionTimers.nextWakeUs`): one timeout
    /// request armed for the earliest deadline and kept across waits, rather
    /// than a short timeout on every wait. At 20 000 requests/s with a mirror
    /// the wait's own timeout, armed again at each of its sleeps, cost the
    /// worker 1 to 6 us of CPU per request more (BENCHMARKS.md, "A mirror
    /// batch's wake: one timeout request"). `timerArmedUs`: the deadline armed (0: none);
    /// `timerSerial` tells the armed request's completion from a superseded one's.
    private var timerArmedUs: UInt64 = 0
    private var timerSerial: UInt32 = 0
    static let timerKind: UInt8 = 0xE1
    private var growthErrorLogged = false
    /// The context, table, waiters and timers of the worker's logic.
    let parts: WorkerParts
    /// The worker's logic; it drives the sessions, this carries out their operations.
    let core: WorkerCore<IOUringWorker>

    /// Creates the ring and the memory of a worker; runs on the worker's own thread.
    init(_ environment: WorkerEnvironment) throws {
        let config = environment.config
        precondition(environment.listenerFDs.count <= 64, "at most 64 listeners per worker")
        self.config = config
        listenerFDs = environment.listenerFDs
        listenersOpen = !listenerFDs.isEmpty
        sockets = try WorkerSockets(config: config, targets: environment.targets, loopGuard: environment.loopGuard,
                                    stats: environment.stats, logger: environment.logger, nonBlocking: false)
        stats = environment.stats
        control = environment.control
        logger = environment.logger
        let preferred: Ring.SetupMode = switch config.ringMode {
        case .deferTaskrun: .deferTaskrun
        case .coopTaskrun: .coopTaskrun
        case .plain: .plain
        }
        ring = try Ring(entries: UInt32(config.ringEntries), completionEntries: UInt32(config.completionEntries),
                        preferred: preferred)
        if config.zeroCopy == .on && !ring.supportsZeroCopySend {
            throw ProxyError("--zerocopy on: this kernel's io_uring has no zero-copy send (IORING_OP_SEND_ZC and "
                + "SENDMSG_ZC, Linux 6.1 and later); use --zerocopy auto or off")
        }
        pool = try BufferPool(slotSize: config.slotSize, slotCount: config.poolSlotsPerWorker)
        provided = try ProvidedBuffers(ring: ring, pool: pool, windowSlots: config.providedWindowSlotsPerWorker,
                                       registerSegments: true)
        parts = try WorkerParts(environment, pool: pool)
        sendMessageSupported = ring.supportsSendMessage
        legsPerSession = Leg.count(mirrors: config.mirrorSlotCount)
        zeroCopyLegs = .allocate(capacity: config.sessionsPerWorker * legsPerSession)
        zeroCopyLegs.initialize(repeating: false, count: config.sessionsPerWorker * legsPerSession)
        if config.zeroCopy != .off && ring.supportsZeroCopySend {
            // A record per send whose notification is to come: as many as
            // slots (each holds at least one), and at least one per leg.
            zeroCopy = ZeroCopySends(capacity: max(pool.slotCount, config.sessionsPerWorker * legsPerSession),
                                     slotsPerRecord: Session.gatherChunksMax, poolSlots: pool.slotCount)
            // Whether the kernel says it copied (6.2+); 6.1 refuses a send that asks.
            ring.probeZeroCopyUsageReport()
            zeroCopyFixedVectored = ring.probeFixedVectoredZeroCopy()
        } else {
            zeroCopy = nil
            zeroCopyFixedVectored = false
        }
        zeroCopyBytesMin = config.zeroCopy == .on ? 1 : config.zeroCopyBytesMin
        discardBuffer = .allocate(byteCount: Self.discardBufferBytes, alignment: 4096)
        connectTimeouts = [RingTimeout(milliseconds: config.mainConnectTimeoutMs),
                           RingTimeout(milliseconds: config.mirrorConnectTimeoutMs)]
        core = parts.core(environment)
    }

    deinit {
        zeroCopyLegs.deallocate()
        discardBuffer.deallocate()
        closeListener()
    }

    // MARK: - The loop

    func run() throws {
        context.nowMs = MonotonicClock.coarseMs()
        context.nowUs = MonotonicClock.nowMicros()
        core.start(io: self)
        while true {
            provided.commit()
            var count = try waitForCompletions()
            startRound()
            while count > 0 {
                for index in 0..<count {
                    let completion = ring.completion(at: index)
                    if completion.tag.kind == ZeroCopySends.completionKind {
                        zeroCopyCompleted(completion)
                        continue
                    }
                    if completion.tag.kind == Self.timerKind {
                        // The round's end fires what is due (`afterCompletions`).
                        if completion.tag.session == timerSerial { timerArmedUs = 0 }
                        continue
                    }
                    var hasMore = completion.hasMore
                    if !hasMore && completion.tag.kind == OperationKind.accept.rawValue {
                        hasMore = acceptEnded(listener: completion.tag.session)
                    }
                    core.deliver(WorkerCompletion(tag: completion.tag, result: completion.result,
                                                  selectedBuffer: completion.selectedBuffer, hasMore: hasMore),
                                 io: self)
                }
                provided.commit()
                count = ring.reap()
            }
            if finishRound() && !awaitingZeroCopyNotifications() { break }
        }
        closeListener()
        ring.submit()
    }

    /// Submits and sleeps until completions are ready, then reaps a batch.
    /// With `waitBatch` > 1 it first waits briefly for several (fewer
    /// wakeups and context switches under load), then for one, up to the tick.
    private func waitForCompletions() throws -> Int {
        if core.hasWorkWaiting {
            // Handshakes wait for their turn: what has come, without sleeping.
            try ring.submitAndGetEvents()
            return ring.reap()
        }
        if config.waitBatch > 1 {
            try ring.submitAndWait(count: UInt32(config.waitBatch), timeoutNanoseconds: Int64(config.waitBatchTimeoutUs) * 1000)
            let count = ring.reap()
            if count > 0 { return count }
        }
        if let deadlineUs = parts.timers.nextWakeUs, timerArmedUs == 0 || deadlineUs < timerArmedUs {
            armTimer(atUs: deadlineUs)
        }
        try ring.submitAndWait(count: 1, timeoutNanoseconds: Int64(WorkerCore<IOUringWorker>.tickMs) * 1_000_000)
        return ring.reap()
    }

    /// Arms the timers' wake for `deadlineUs`; one armed before for a later
    /// deadline still completes, and is then ignored.
    private func armTimer(atUs deadlineUs: UInt64) {
        let untilNanoseconds = deadlineUs > context.nowUs ? Int64(deadlineUs &- context.nowUs) * 1000 : 1
        timerSerial &+= 1
        timerArmedUs = deadlineUs
        ring.prepareTimeout(nanoseconds: untilNanoseconds,
                            tag: CompletionTag(kind: Self.timerKind, leg: 0, generation: 0, session: timerSerial))
    }

    // MARK: - Zero-copy sends

    /// What `--zerocopy` came to on this kernel, for `--check` and the log.
    var zeroCopyNote: String {
        guard zeroCopy != nil else {
            return config.zeroCopy == .off ? "zero-copy sends off" : "no zero-copy sends (this kernel has none)"
        }
        let gathered = zeroCopyFixedVectored ? "registered buffers for gathered sends too"
            : "gathered sends without registered buffers (Linux 6.15+ has them)"
        return config.zeroCopy == .on ? "zero-copy sends for every send (\(gathered))"
            : "zero-copy sends of \(SizeParser.text(zeroCopyBytesMin)) or more to peers not on this host (\(gathered))"
    }

    /// The result of a zero-copy send goes to its session as any send's;
    /// its notification lets go of the slots the send read.
    private func zeroCopyCompleted(_ completion: Completion) {
        guard let zeroCopy else { return }
        if completion.isNotification && completion.zeroCopyCopied { stats.zeroCopyCopied.bump() }
        let sessionTag = zeroCopy.completed(completion.tag.session, isNotification: completion.isNotification,
                                            hasMore: completion.hasMore) { provided.provide($0) }
        if let sessionTag {
            core.deliver(WorkerCompletion(tag: sessionTag, result: completion.result), io: self)
        }
    }

    /// Every session has ended: the worker still waits for the
    /// notifications of its zero-copy sends (the kernel may read the pool
    /// until then), but not forever: an orphaned socket whose peer stopped
    /// acknowledging holds them for minutes. The registration keeps those
    /// pages pinned after the worker exits, so no one reuses them.
    private func awaitingZeroCopyNotifications() -> Bool {
        guard let zeroCopy, zeroCopy.openRecords > 0 else { return false }
        if zeroCopyWaitDeadlineMs == 0 {
            zeroCopyWaitDeadlineMs = context.nowMs + Self.zeroCopyNotificationWaitMs
            return true
        }
        guard context.nowMs >= zeroCopyWaitDeadlineMs else { return true }
        let note = "stopping with \(zeroCopy.openRecords) zero-copy sends not yet notified by the kernel "
            + "(peers that stopped acknowledging); their pages stay pinned until the kernel lets go"
        logger.warning("\(note)")
        return false
    }

    static let zeroCopyNotificationWaitMs: UInt64 = 2_000

    /// Whether a send of `length` bytes on the leg of `tag` goes zero-copy,
    /// and the record to send it with.
    @inline(__always)
    private func zeroCopyRecord(length: Int, tag: CompletionTag) -> UInt32? {
        guard let zeroCopy, length >= zeroCopyBytesMin, zeroCopyLegs[zeroCopyLeg(tag)] else { return nil }
        return zeroCopy.open(sessionTag: tag)
    }

    @inline(__always)
    private func zeroCopyLeg(_ tag: CompletionTag) -> Int {
        Int(tag.session) &* legsPerSession &+ Int(tag.leg)
    }

    /// Decides, as a leg connects, whether its sends may be zero-copy: with
    /// `auto`, never towards this host, where the kernel copies anyway.
    private func decideZeroCopy(tag: CompletionTag, peer: () -> SocketAddress?) {
        guard zeroCopy != nil else { return }
        let peerIsLocal = config.zeroCopy == .auto ? peer().map { sockets.isLocal($0) } : nil
        zeroCopyLegs[zeroCopyLeg(tag)] = ZeroCopySends.eligible(mode: config.zeroCopy, peerIsLocal: peerIsLocal)
    }

    /// The registered buffer (pool segment) that holds `slot`.
    @inline(__always)
    private func segment(_ slot: UInt32) -> UInt32 { slot / UInt32(pool.segmentSlots) }

    // MARK: - WorkerBackend

    func tick(nowMs: UInt64) {
        if !acceptsCancelled && armedAccepts != 0 && armedAccepts.nonzeroBitCount < listenerFDs.count { _ = armAccept() }
        // Slots that wait for zero-copy notifications are not free yet either.
        stats.poolSlotsInUse.store(UInt64(pool.inUse + (zeroCopy?.slotsDeferred ?? 0)), ordering: .relaxed)
        stats.poolSlotsGrown.store(UInt64(provided.grownSlots), ordering: .relaxed)
        if let error = provided.growthError, !growthErrorLogged {
            growthErrorLogged = true
            let note = "the buffer pool stopped growing at \(provided.grownSlots) of \(pool.slotCount) slots: \(error); "
                + "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in systemd) or lower --max-memory"
            logger.error("\(note)")
        }
    }

    /// Arms the accept of every listener that has none armed.
    func armAccept() -> Bool {
        guard listenersOpen else { return false }
        acceptsCancelled = false
        for (index, fd) in listenerFDs.enumerated() where armedAccepts & (1 << index) == 0 {
            ring.prepareAcceptMultishot(fd: fd, tag: Self.acceptTag(listener: index))
            armedAccepts |= 1 << index
        }
        return true
    }

    /// Listener `index`'s accept: the core's accept tag for the first.
    private static func acceptTag(listener index: Int) -> CompletionTag {
        CompletionTag(kind: OperationKind.accept.rawValue, leg: 0, generation: 0, session: UInt32(index))
    }

    /// One listener's accept has ended: to the core, the accept goes on
    /// (true) while another listener's is armed; this one is armed again at
    /// the next tick unless the accepts were cancelled. The core sees the
    /// accept end when the last one does, and arms them all again, pauses or
    /// closes the listeners as it would with one.
    private func acceptEnded(listener index: UInt32) -> Bool {
        armedAccepts &= ~(1 << UInt64(index))
        return armedAccepts != 0
    }

    func cancelAccept() {
        acceptsCancelled = true
        for index in listenerFDs.indices where armedAccepts & (1 << index) != 0 {
            ring.prepareCancel(target: Self.acceptTag(listener: index), tag: WorkerCore<IOUringWorker>.acceptCancelTag)
        }
    }

    var buffersLent: Bool { provided.lent > 0 }

    @inline(__always)
    func bufferTaken(_ slot: UInt32) { provided.taken(slot) }

    func admit(fd: Int32, session: Session) {
        Sockets.setNoDelay(fd)
        decideZeroCopy(tag: CompletionTag(kind: 0, leg: Leg.client.rawValue, generation: 0, session: session.index)) {
            Sockets.peerAddress(fd)
        }
    }

    func refuse(fd: Int32) {
        sockets.forgetLoopRecord(fd)
        Glibc.close(fd)
    }

    func closeListener() {
        guard listenersOpen else { return }
        listenerFDs.forEach { _ = Glibc.close($0) }
        listenersOpen = false
        armedAccepts = 0
    }

    // MARK: - SessionIO

    func openSocket(for leg: Leg) -> Int32 { sockets.openSocket(for: leg) }

    func connect(fd: Int32, leg: Leg, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        let (address, length) = sockets.connecting(fd: fd, leg: leg)
        decideZeroCopy(tag: tag) { sockets.targets[leg.targetIndex] }
        let timeout = timeoutMs == 0 ? nil : connectTimeout(milliseconds: timeoutMs)
        ring.prepareConnect(fd: fd, address: address, length: length, tag: tag, timeout: timeout, timeoutTag: timeoutTag)
    }

    /// The timeout of `milliseconds` the session asked for, whatever leg it is for.
    private func connectTimeout(milliseconds: Int) -> RingTimeout {
        if let known = connectTimeouts.first(where: { $0.milliseconds == milliseconds }) { return known }
        let timeout = RingTimeout(milliseconds: milliseconds)
        connectTimeouts.append(timeout)
        return timeout
    }

    @inline(__always)
    func recv(fd: Int32, tag: CompletionTag) {
        ring.prepareRecv(fd: fd, group: provided.group, length: pool.slotSize, tag: tag)
    }

    /// TCP discards received bytes for a recv with MSG_TRUNC instead of
    /// copying them (tcp(7)), so one discard takes up to a MiB of a mirror's
    /// replies without touching memory; the buffer is only there for the
    /// address check and is never written.
    @inline(__always)
    func discard(fd: Int32, tag: CompletionTag) {
        ring.prepareRecv(fd: fd, into: discardBuffer, length: Self.discardBytesMax, tag: tag, flags: Ring.messageTruncate)
    }

    @inline(__always)
    func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag) {
        if let zeroCopy, let record = zeroCopyRecord(length: length, tag: tag) {
            zeroCopy.add(slot: slot, to: record)
            stats.zeroCopySends.bump()
            ring.prepareSendZeroCopy(fd: fd, from: pool.pointer(slot) + offset, length: length,
                                     bufferIndex: segment(slot), tag: zeroCopy.tag(of: record))
            return
        }
        ring.prepareSend(fd: fd, from: pool.pointer(slot) + offset, length: length, tag: tag)
    }

    func send(fd: Int32, from bytes: UnsafeRawPointer, length: Int, tag: CompletionTag) {
        ring.prepareSend(fd: fd, from: bytes, length: length, tag: tag)
    }

    @inline(__always)
    func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag) {
        guard sendMessageSupported else {
            let chunk = queue.chunk(at: 0)
            ring.prepareSend(fd: fd, from: pool.pointer(chunk.slot) + Int(chunk.offset), length: Int(chunk.length), tag: tag)
            return
        }
        let message = sockets.gatherMessage(tag: tag, queue: queue, chunks: chunks, pool: pool)
        if let zeroCopy, let record = zeroCopyRecord(length: length, tag: tag) {
            // A registered buffer only if every chunk lies in one segment.
            var bufferIndex: UInt32? = zeroCopyFixedVectored ? segment(queue.chunk(at: 0).slot) : nil
            for position in 0..<chunks {
                let slot = queue.chunk(at: position).slot
                zeroCopy.add(slot: slot, to: record)
                if bufferIndex != nil && segment(slot) != bufferIndex { bufferIndex = nil }
            }
            stats.zeroCopySends.bump()
            ring.prepareSendMessageZeroCopy(fd: fd, message: message, bufferIndex: bufferIndex, tag: zeroCopy.tag(of: record))
            return
        }
        ring.prepareSendMessage(fd: fd, message: message, tag: tag)
    }

    /// The FIN goes now, from this thread: the kernel runs a ring's shutdown
    /// on an io-wq thread, always (`REQ_F_FORCE_ASYNC`), so each one cost a
    /// wakeup of that thread and a switch to it, for a call that does not
    /// block on a TCP socket. A no-op carries its success back as a
    /// completion, as the ring's own would have. Nothing of the leg is in
    /// flight when the session asks for its FIN, so no send prepared before
    /// can follow it. A failure (the peer reset the connection) goes through
    /// the ring's shutdown, which reports it.
    func shutdownWrite(fd: Int32, tag: CompletionTag) {
        sockets.shuttingDown(fd: fd, tag: tag)
        if Glibc.shutdown(fd, Int32(SHUT_WR)) == 0 {
            ring.prepareNop(tag: tag)
        } else {
            ring.prepareShutdown(fd: fd, how: Int32(SHUT_WR), tag: tag)
        }
    }

    func cancel(fd: Int32, tag: CompletionTag) {
        ring.prepareCancel(fd: fd, tag: tag)
    }

    func close(fd: Int32, tag: CompletionTag) {
        sockets.forgetLoopRecord(fd)
        if zeroCopy != nil && Leg(tag).isMirror && zeroCopyLegs[zeroCopyLeg(tag)]
            && unsentBytes(fd: fd) > 0 {
            // A mirror closed with bytes it has not acknowledged was cut (the
            // session counted them missed). Sent zero-copy, those bytes are
            // pool slots, which an orphaned socket would hold for minutes if
            // its peer stopped reading: reset it, and they come back now.
            Sockets.setResetOnClose(fd)
        }
        ring.prepareClose(fd: fd, tag: tag)
    }

    /// A free slot not lent to the kernel (`--tls-cert`: plaintext beyond a receive's slot).
    func takeSlot() -> UInt32? { provided.takeFree() }

    /// A slot a zero-copy send still reads goes back with its notification.
    @inline(__always)
    func recycle(slot: UInt32) {
        if let zeroCopy, zeroCopy.deferRecycle(slot) { return }
        provided.provide(slot)
    }
}
