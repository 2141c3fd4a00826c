import Glibc
import Logging
import Ring
import Synchronization

/// Asks the workers to stop; shared by the `Proxy` and its workers.
final class WorkerControl: Sendable {
    enum StopMode: Int { case running = 0, graceful = 1, immediate = 2 }
    let stopMode = Atomic<Int>(0)
    let ready = Atomic<Int>(0)
    let exited = Atomic<Int>(0)
    let startErrors = Mutex<[String]>([])
    let setupMode = Mutex<String>("")
}

/// One thread, one ring, one listener, one session table: the completion
/// loop. It implements `SessionIO` over the ring, so the sessions it drives
/// ask for real operations. Nothing here is shared with other threads but
/// the counters (`WorkerStats`) and the stop request (`WorkerControl`).
final class Worker: SessionIO {
    static let tickMs: UInt64 = 100
    static let drainBufferBytes = 4096
    static let drainBytesMax = 1 << 20
    static let acceptPauseMs: UInt64 = 100
    /// How often sessions are checked against the idle timeout.
    static let idleCheckMs: UInt64 = 1_000

    let ring: Ring
    let pool: BufferPool
    let provided: ProvidedBuffers
    let context: SessionContext
    let table: SessionTable
    let stats: WorkerStats
    private let control: WorkerControl
    private let logger: Logger
    private let config: Config
    private let targets: [SocketAddress]
    private let loopGuard: LoopGuard
    /// What this worker recorded with the loop guard, by descriptor,
    /// forgotten when closed (empty unless a loop was suspected).
    private var loopRecords: [Int32: LoopRecord] = [:]
    private enum LoopRecord {
        case connecting
        case outbound(LoopGuard.Connection)
        case suspect(LoopGuard.Connection)
    }
    private var loopLog = RateLimitedLog(intervalMs: 10_000)
    /// The targets' addresses in memory that stays put: the kernel reads a
    /// connect's address when its SQE is submitted, which may be later.
    private let targetAddresses: UnsafeMutablePointer<sockaddr_storage>
    private var listenerFD: Int32
    private let drainBuffer: UnsafeMutableRawPointer
    private let mainTimeout: RingTimeout
    private let mirrorTimeout: RingTimeout
    /// Sessions waiting for free slots, in arrival order (a ring of table indices).
    private var waiters: [UInt32]
    private var waitersHead = 0
    private var waitersCount = 0
    /// Whether sessions have mirror timers (the clock in microseconds is then read).
    private let mirrorTimers: Bool
    /// Sessions waiting for a mirror batch's deadline, and for a mirror's
    /// turn timeout, each in the order asked.
    private var batchWakes: SessionWakeQueue
    private var turnWakes: SessionWakeQueue
    /// Gathered mirror sends: a msghdr and `Session.gatherChunksMax` iovec
    /// entries per (session, mirror), read by the kernel until the send
    /// completes. An anonymous mapping: only pages that sends use become resident.
    private let gatherMessages: UnsafeMutablePointer<msghdr>
    private let gatherVectors: UnsafeMutablePointer<iovec>
    private let gatherMemory: UnsafeMutableRawPointer
    private let gatherMemoryBytes: Int
    /// IORING_OP_SENDMSG is there (5.3 and later); without it a gathered send
    /// sends its first chunk, and the session sends the rest as after a short send.
    private let sendMessageSupported: Bool

    private var acceptArmed = false
    private var acceptPausedUntilMs: UInt64 = 0
    private var stopping = false
    private var aborted = false
    private var drainDeadlineMs: UInt64 = 0
    private var nextTickMs: UInt64 = 0
    private var nextIdleCheckMs: UInt64 = 0
    private var growthErrorLogged = false
    private var rejectLog = RateLimitedLog(intervalMs: 10_000)
    private var acceptErrorLog = RateLimitedLog(intervalMs: 5_000)
    private var mirrorHealthLog: MirrorHealthLog
    private static let acceptTag = CompletionTag(kind: OperationKind.accept.rawValue, endpoint: 0, generation: 0, slot: 0)

    /// Creates the ring and the memory of a worker; runs on the worker's own thread.
    init(config: Config, targets: [SocketAddress], loopGuard: LoopGuard, listenerFD: Int32, stats: WorkerStats,
         control: WorkerControl, logger: Logger) throws {
        self.config = config
        self.targets = targets
        self.loopGuard = loopGuard
        targetAddresses = .allocate(capacity: targets.count)
        targetAddresses.initialize(from: targets.map(\.storage), count: targets.count)
        self.listenerFD = listenerFD
        self.stats = stats
        self.control = control
        self.logger = logger
        mirrorHealthLog = MirrorHealthLog(names: config.mirrors.map(\.text))
        let preferred: Ring.SetupMode = switch config.ringMode {
        case .deferTaskrun: .deferTaskrun
        case .coopTaskrun: .coopTaskrun
        case .plain: .plain
        }
        ring = try Ring(entries: UInt32(config.ringEntries), completionEntries: UInt32(config.completionEntries),
                        preferred: preferred)
        pool = try BufferPool(slotSize: config.slotSize, slotCount: config.poolSlotsPerWorker)
        provided = try ProvidedBuffers(ring: ring, pool: pool, windowSlots: config.providedWindowSlotsPerWorker,
                                       registerSegments: true)
        context = SessionContext(limits: config.limits, pool: pool, stats: stats)
        // Admission control: the table holds only as many sessions as the
        // pool can serve at once, whatever their peers do.
        table = try SessionTable(capacity: config.sessionsPerWorker, context: context)
        waiters = Array(repeating: 0, count: config.sessionsPerWorker)
        mirrorTimers = !config.mirrors.isEmpty && (config.mirrorBatchBytes > 0 || config.mirrorTurns > 0)
        batchWakes = SessionWakeQueue(capacity: config.sessionsPerWorker)
        turnWakes = SessionWakeQueue(capacity: config.sessionsPerWorker)
        let gatherLegs = max(1, config.sessionsPerWorker * config.mirrors.count)
        let messagesBytes = gatherLegs * MemoryLayout<msghdr>.stride
        let vectorsOffset = (messagesBytes + 15) & ~15
        gatherMemoryBytes = vectorsOffset + gatherLegs * Session.gatherChunksMax * MemoryLayout<iovec>.stride
        guard let gatherMemory = mmap(nil, gatherMemoryBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              gatherMemory != MAP_FAILED else {
            throw RingError("mmap of \(gatherMemoryBytes) bytes for gathered mirror sends", errno: errno)
        }
        self.gatherMemory = gatherMemory
        gatherMessages = gatherMemory.bindMemory(to: msghdr.self, capacity: gatherLegs)
        gatherVectors = (gatherMemory + vectorsOffset).bindMemory(to: iovec.self, capacity: gatherLegs * Session.gatherChunksMax)
        sendMessageSupported = ring.supportsSendMessage
        drainBuffer = .allocate(byteCount: Self.drainBufferBytes, alignment: 4096)
        mainTimeout = RingTimeout(milliseconds: config.mainConnectTimeoutMs)
        mirrorTimeout = RingTimeout(milliseconds: config.mirrorConnectTimeoutMs)
    }

    deinit {
        munmap(gatherMemory, gatherMemoryBytes)
        drainBuffer.deallocate()
        targetAddresses.deallocate()
        closeListener()
    }

    static func monotonicMs() -> UInt64 {
        var now = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
        return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
    }

    /// The fine clock of mirror batches (the coarse one moves in jiffies, too slow for a delay of microseconds).
    static func monotonicUs() -> UInt64 {
        var now = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    // MARK: - The loop

    func run() throws {
        context.nowMs = Self.monotonicMs()
        context.nowUs = Self.monotonicUs()
        nextTickMs = context.nowMs + Self.tickMs
        armAccept()
        while true {
            provided.commit()
            var count = try waitForCompletions()
            context.nowMs = Self.monotonicMs()
            if mirrorTimers { context.nowUs = Self.monotonicUs() }
            while count > 0 {
                for index in 0..<count { dispatch(ring.completion(at: index)) }
                provided.commit()
                count = ring.reap()
            }
            if !batchWakes.isEmpty || !turnWakes.isEmpty { wakeDueSessions() }
            resumeWaiters()
            if context.nowMs >= nextTickMs { tick() }
            if stopping && table.activeCount == 0 && !acceptArmed { break }
        }
        closeListener()
        ring.submit()
    }

    /// Submits and sleeps until completions are ready, then reaps a batch.
    /// With `waitBatch` > 1 it first waits briefly for several (fewer
    /// wakeups and context switches under load), then for one, up to the tick.
    private func waitForCompletions() throws -> Int {
        if config.waitBatch > 1 {
            try ring.submitAndWait(count: UInt32(config.waitBatch), timeoutNanoseconds: Int64(config.waitBatchTimeoutUs) * 1000)
            let count = ring.reap()
            if count > 0 { return count }
        }
        var timeoutNanoseconds = Int64(Self.tickMs) * 1_000_000
        let deadlineUs = min(batchWakes.firstDeadlineUs ?? .max, turnWakes.firstDeadlineUs ?? .max)
        if deadlineUs != .max {
            // Wake for the next mirror deadline; at least 1 us, since 0 means "no timeout".
            let untilNanoseconds = deadlineUs > context.nowUs ? Int64(deadlineUs &- context.nowUs) * 1000 : 1000
            timeoutNanoseconds = max(1000, min(timeoutNanoseconds, untilNanoseconds))
        }
        try ring.submitAndWait(count: 1, timeoutNanoseconds: timeoutNanoseconds)
        return ring.reap()
    }

    /// Tells the sessions whose mirror deadlines have passed.
    private func wakeDueSessions() {
        context.nowUs = Self.monotonicUs()
        while let index = batchWakes.popDue(nowUs: context.nowUs) {
            table.sessions[Int(index)].timerFired(.mirrorBatch, io: self)
        }
        while let index = turnWakes.popDue(nowUs: context.nowUs) {
            table.sessions[Int(index)].timerFired(.mirrorTurn, io: self)
        }
    }

    @inline(__always)
    private func dispatch(_ completion: Completion) {
        let tag = completion.tag
        guard let kind = OperationKind(rawValue: tag.kind) else { return }
        if kind == .accept {
            accepted(completion)
            return
        }
        if let slot = completion.selectedBuffer { provided.taken(slot) }
        let handled: Void? = table.withSession(for: tag) { session in
            var result = completion.result
            if kind == .connect && (loopGuard.isArmed || !loopRecords.isEmpty)
                && connectLooped(session, leg: Int(tag.endpoint), result: result) {
                result = -ELOOP
            }
            session.handle(kind: kind, leg: Int(tag.endpoint), result: result,
                           selectedBuffer: completion.selectedBuffer, io: self)
            if !session.isActive { table.free(session) }
        }
        if handled == nil, let slot = completion.selectedBuffer {
            // A late completion of a session that has ended: its buffer, if
            // the kernel picked one, goes straight back.
            provided.provide(slot)
        }
    }

    private func tick() {
        nextTickMs = context.nowMs + Self.tickMs
        stats.poolSlotsInUse.store(UInt64(pool.inUse), ordering: .relaxed)
        stats.poolSlotsGrown.store(UInt64(provided.grownSlots), ordering: .relaxed)
        if let error = provided.growthError, !growthErrorLogged {
            growthErrorLogged = true
            let note = "the buffer pool stopped growing at \(provided.grownSlots) of \(pool.slotCount) slots: \(error); "
                + "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in systemd) or lower --max-memory"
            logger.error("\(note)")
        }
        for (index, mirror) in stats.mirrors.enumerated() {
            mirror.backingOff.store(context.mirrorIsBackingOff(index) ? 1 : 0, ordering: .relaxed)
        }
        mirrorHealthLog.check(stats: stats, context: context, logger: logger)
        let mode = WorkerControl.StopMode(rawValue: control.stopMode.load(ordering: .relaxed)) ?? .running
        if mode != .running && !stopping {
            stopping = true
            drainDeadlineMs = context.nowMs + UInt64(config.drainTimeoutMs)
            if acceptArmed { ring.prepareCancel(target: Self.acceptTag, tag: CompletionTag(rawValue: 0)) }
        }
        if stopping && !aborted && (mode == .immediate || context.nowMs >= drainDeadlineMs) {
            aborted = true
            for session in table.sessions where session.isActive {
                session.abort(io: self)
                if !session.isActive { table.free(session) }
            }
        }
        if !stopping && !acceptArmed && context.nowMs >= acceptPausedUntilMs { armAccept() }
        if config.idleTimeoutMs > 0 && context.nowMs >= nextIdleCheckMs {
            nextIdleCheckMs = context.nowMs + min(Self.idleCheckMs, UInt64(max(1, config.idleTimeoutMs / 4)))
            for session in table.sessions where session.isActive && !session.isEnding {
                session.checkIdle(io: self)
                if !session.isActive { table.free(session) }
            }
        }
        guard context.sessionsEnding > 0 else { return }
        for session in table.sessions where session.isActive && session.isEnding {
            session.tick(io: self)
            if !session.isActive { table.free(session) }
        }
    }

    // MARK: - Accepting

    private func armAccept() {
        guard listenerFD >= 0 else { return }
        ring.prepareAcceptMultishot(fd: listenerFD, tag: Self.acceptTag)
        acceptArmed = true
    }

    private func accepted(_ completion: Completion) {
        if completion.result >= 0 {
            let fd = completion.result
            if isLoop(acceptedFD: fd) {
                stats.loopsRefused.bump()
                Glibc.close(fd)
            } else if !stopping, let session = table.take() {
                Sockets.setNoDelay(fd)
                session.start(clientFD: fd, io: self)
                if !session.isActive { table.free(session) }
            } else {
                stats.sessionsRejected.bump()
                forgetLoopRecord(fd)
                Glibc.close(fd)
                if !stopping && rejectLog.allow(nowMs: context.nowMs) {
                    let note = "refusing clients: all \(table.capacity) sessions this worker's memory bound admits are live "
                        + "(--max-memory, --max-sessions)\(rejectLog.suppressedNote)"
                    logger.warning("\(note)")
                }
            }
        } else if !(stopping && completion.result == -ECANCELED) {
            stats.acceptErrors.bump()
            if acceptErrorLog.allow(nowMs: context.nowMs) {
                logger.warning("accept failed: \(RingError.describe(errno: -completion.result))\(acceptErrorLog.suppressedNote)")
            }
        }
        guard !completion.hasMore else { return }
        // The multishot accept ended.
        acceptArmed = false
        if stopping {
            closeListener()
        } else if completion.result < 0 {
            // Out of descriptors or memory: retrying at once would spin a
            // core. Clients wait in the listen backlog meanwhile.
            acceptPausedUntilMs = context.nowMs + Self.acceptPauseMs
        } else {
            armAccept()
        }
    }

    // MARK: - Loops made at run time

    /// Asks the loop guard about a client from this host that was addressed
    /// to one of our targets; records it (until closed) unless it is one of
    /// our own connections, which is refused and logged.
    private func isLoop(acceptedFD fd: Int32) -> Bool {
        guard let peer = Sockets.peerAddress(fd), loopGuard.isLocal(peer),
              let destination = Sockets.originalDestination(fd, family: peer.family),
              let suspect = loopGuard.suspect(source: peer, destination: destination) else { return false }
        if loopGuard.accepted(suspect, localAddress: Sockets.localAddress) {
            logLoop(destination: destination)
            return true
        }
        loopRecords[fd] = .suspect(suspect)
        return false
    }

    /// Tells the loop guard that a session's outbound connect ended; true if
    /// it already arrived at our listener (the session then fails it).
    private func connectLooped(_ session: Session, leg: Int, result: Int32) -> Bool {
        let fd = session.legs[leg].fd
        var wasConnecting = false
        if case .connecting = loopRecords[fd] {
            loopRecords[fd] = nil
            wasConnecting = true
        }
        var established: LoopGuard.Connection?
        if result == 0 && loopGuard.isArmed, let local = Sockets.localAddress(fd) {
            established = LoopGuard.Connection(source: local, destination: targets[leg - 1])
        }
        guard wasConnecting || established != nil else { return false }
        if loopGuard.connected(fd: wasConnecting ? fd : nil, established: established) {
            stats.loopsRefused.bump()
            logLoop(destination: targets[leg - 1])
            return true
        }
        if let established { loopRecords[fd] = .outbound(established) }
        return false
    }

    private func forgetLoopRecord(_ fd: Int32) {
        guard !loopRecords.isEmpty, let record = loopRecords.removeValue(forKey: fd) else { return }
        switch record {
        case .connecting: _ = loopGuard.connected(fd: fd, established: nil)
        case .outbound(let connection): loopGuard.closed(connection, outbound: true)
        case .suspect(let connection): loopGuard.closed(connection, outbound: false)
        }
    }

    private func logLoop(destination: SocketAddress) {
        guard loopLog.allow(nowMs: context.nowMs) else { return }
        let note = "refusing a loop: this proxy's own connections to \(destination) arrive back at its listener "
            + "(a NAT rule, or an address of this host since start?)\(loopLog.suppressedNote)"
        logger.error("\(note)")
    }

    private func closeListener() {
        guard listenerFD >= 0 else { return }
        Glibc.close(listenerFD)
        listenerFD = -1
    }

    // MARK: - Waiting for slots

    private func resumeWaiters() {
        while waitersCount > 0 && provided.lent > 0 {
            let index = waiters[waitersHead]
            waitersHead = (waitersHead + 1) % waiters.count
            waitersCount -= 1
            let session = table.sessions[Int(index)]
            session.resumeReceiving(io: self)
        }
    }

    func waitForBuffers(session index: UInt32) {
        guard waitersCount < waiters.count else { return }
        waiters[(waitersHead + waitersCount) % waiters.count] = index
        waitersCount += 1
    }

    // MARK: - SessionIO

    func openSocket(target: Int) -> Int32 {
        let fd = Sockets.openStream(family: targets[target].family)
        // While a mirror's first turns are kept, each reply must wake its
        // drain; the session asks for batches (`drainInBatches`) after.
        if target > 0 && fd >= 0 && config.mirrorDrainBatchBytes > 0 && config.mirrorTurns == 0 {
            Sockets.setReceiveLowWater(fd, bytes: config.mirrorDrainBatchBytes)
        }
        return fd
    }

    func connect(fd: Int32, target: Int, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        if loopGuard.isArmed {
            loopGuard.connecting(fd: fd, to: targets[target])
            loopRecords[fd] = .connecting
        }
        let timeout = timeoutMs == 0 ? nil : (target == 0 ? mainTimeout : mirrorTimeout)
        let address = UnsafeRawPointer(targetAddresses + target).assumingMemoryBound(to: sockaddr.self)
        ring.prepareConnect(fd: fd, address: address, length: targets[target].length, tag: tag, timeout: timeout,
                            timeoutTag: timeoutTag)
    }

    @inline(__always)
    func recv(fd: Int32, tag: CompletionTag) {
        ring.prepareRecv(fd: fd, group: provided.group, length: pool.slotSize, tag: tag)
    }

    /// TCP discards received bytes for a recv with MSG_TRUNC instead of
    /// copying them (tcp(7)), so one drain takes up to a MiB of a mirror's
    /// replies without touching memory; the buffer is only there for the
    /// address check and is never written.
    @inline(__always)
    func drain(fd: Int32, tag: CompletionTag) {
        ring.prepareRecv(fd: fd, into: drainBuffer, length: Self.drainBytesMax, tag: tag, flags: Ring.messageTruncate)
    }

    @inline(__always)
    func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag) {
        ring.prepareSend(fd: fd, from: pool.pointer(slot) + offset, length: length, tag: tag)
    }

    @inline(__always)
    func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag) {
        guard sendMessageSupported else {
            let chunk = queue.chunk(at: 0)
            ring.prepareSend(fd: fd, from: pool.pointer(chunk.slot) + Int(chunk.offset), length: Int(chunk.length), tag: tag)
            return
        }
        // One msghdr per (session, mirror): one send in flight per leg.
        let leg = Int(tag.slot) &* config.mirrors.count &+ Int(tag.endpoint) &- Session.firstMirror
        let vectors = gatherVectors + leg &* Session.gatherChunksMax
        for position in 0..<chunks {
            let chunk = queue.chunk(at: position)
            vectors[position] = iovec(iov_base: pool.pointer(chunk.slot) + Int(chunk.offset), iov_len: Int(chunk.length))
        }
        let message = gatherMessages + leg
        message.pointee = msghdr()
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = chunks
        ring.prepareSendMessage(fd: fd, message: message, tag: tag)
    }

    func wake(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        switch timer {
        case .mirrorBatch: batchWakes.append(session: index, deadlineUs: deadlineUs)
        case .mirrorTurn: turnWakes.append(session: index, deadlineUs: deadlineUs)
        }
    }

    func drainInBatches(fd: Int32) {
        if config.mirrorDrainBatchBytes > 0 { Sockets.setReceiveLowWater(fd, bytes: config.mirrorDrainBatchBytes) }
    }

    func shutdownWrite(fd: Int32, tag: CompletionTag) {
        if Int(tag.endpoint) >= Session.firstMirror && config.mirrorDrainBatchBytes > 0 {
            // The mirror has the whole stream: from now on drain its replies
            // as they come (lowering SO_RCVLOWAT wakes the drain for what
            // waits), so that closing it at the end of its linger finds no
            // reply unread, which would turn the FIN into a reset and drop
            // what the kernel has yet to deliver.
            Sockets.setReceiveLowWater(fd, bytes: 1)
        }
        ring.prepareShutdown(fd: fd, how: Int32(SHUT_WR), tag: tag)
    }

    func cancel(fd: Int32, tag: CompletionTag) {
        ring.prepareCancel(fd: fd, tag: tag)
    }

    func close(fd: Int32, tag: CompletionTag) {
        forgetLoopRecord(fd)
        ring.prepareClose(fd: fd, tag: tag)
    }

    /// SIOCOUTQ (linux/sockios.h, equal to TIOCOUTQ), which Glibc's module does not export.
    private static let socketOutputQueueRequest: UInt = 0x5411

    func unsentBytes(fd: Int32) -> Int {
        var count: Int32 = 0
        return ioctl(fd, Self.socketOutputQueueRequest, &count) == 0 ? Int(count) : 0
    }

    @inline(__always)
    func recycle(slot: UInt32) {
        provided.provide(slot)
    }
}
