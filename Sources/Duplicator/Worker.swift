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
    /// The backend the workers run on (never `auto`), and why epoll when it was not asked for.
    let backend = Mutex<(kind: Config.Backend, fallbackReason: String?)?>(nil)
}

/// One thread, one ring, one listener, one session table: the completion
/// loop, and the io_uring backend of the worker's logic (`WorkerCore`): the
/// operations sessions ask for become SQEs, and each CQE goes to the core.
/// Nothing here is shared with other threads but the counters
/// (`WorkerStats`), the stop request (`WorkerControl`), the loop guard and
/// the mirrors' health.
final class Worker: KernelBackend {
    static let drainBufferBytes = 4096
    static let drainBytesMax = 1 << 20

    let ring: Ring
    let pool: BufferPool
    let provided: ProvidedBuffers
    let stats: WorkerStats
    let control: WorkerControl
    private let logger: Logger
    private let config: Config
    /// Targets, loop guard records, gathered-send memory: as the epoll backend's.
    let sockets: WorkerSockets
    private var listenerFD: Int32
    private let drainBuffer: UnsafeMutableRawPointer
    /// The kernel reads a linked timeout's duration at submission: one
    /// stable copy per duration the sessions ask for (main's and the mirrors').
    private var connectTimeouts: [RingTimeout]
    /// IORING_OP_SENDMSG is there (5.3 and later); without it a gathered send
    /// sends its first chunk, and the session sends the rest as after a short send.
    private let sendMessageSupported: Bool
    private var growthErrorLogged = false
    /// The context, table, waiters and timers of the worker's logic.
    let parts: WorkerParts
    /// The worker's logic; it drives the sessions, this carries out their operations.
    let core: WorkerCore<Worker>

    /// Creates the ring and the memory of a worker; runs on the worker's own thread.
    init(config: Config, targets: [SocketAddress], loopGuard: LoopGuard, mirrorHealth: MirrorHealth, listenerFD: Int32,
         stats: WorkerStats, allStats: [WorkerStats], control: WorkerControl, logger: Logger,
         dumpSink: DumpSink? = nil) throws {
        self.config = config
        sockets = try WorkerSockets(config: config, targets: targets, loopGuard: loopGuard, stats: stats, logger: logger,
                                    nonBlocking: false)
        self.listenerFD = listenerFD
        self.stats = stats
        self.control = control
        self.logger = logger
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
        parts = try WorkerParts(config: config, pool: pool, stats: stats, mirrorHealth: mirrorHealth, dumpSink: dumpSink)
        sendMessageSupported = ring.supportsSendMessage
        drainBuffer = .allocate(byteCount: Self.drainBufferBytes, alignment: 4096)
        connectTimeouts = [RingTimeout(milliseconds: config.mainConnectTimeoutMs),
                           RingTimeout(milliseconds: config.mirrorConnectTimeoutMs)]
        core = parts.core(config: config, stats: stats, allStats: allStats, logger: logger)
    }

    deinit {
        drainBuffer.deallocate()
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
                    core.deliver(WorkerCompletion(tag: completion.tag, result: completion.result,
                                                  selectedBuffer: completion.selectedBuffer, hasMore: completion.hasMore),
                                 io: self)
                }
                provided.commit()
                count = ring.reap()
            }
            if finishRound() { break }
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
        var timeoutNanoseconds = Int64(WorkerCore<Worker>.tickMs) * 1_000_000
        if let deadlineUs = parts.timers.nextDeadlineUs {
            // Wake for the next mirror deadline; at least 1 us, since 0 means "no timeout".
            let untilNanoseconds = deadlineUs > context.nowUs ? Int64(deadlineUs &- context.nowUs) * 1000 : 1000
            timeoutNanoseconds = max(1000, min(timeoutNanoseconds, untilNanoseconds))
        }
        try ring.submitAndWait(count: 1, timeoutNanoseconds: timeoutNanoseconds)
        return ring.reap()
    }

    // MARK: - WorkerBackend

    func tick(nowMs: UInt64) {
        stats.poolSlotsInUse.store(UInt64(pool.inUse), ordering: .relaxed)
        stats.poolSlotsGrown.store(UInt64(provided.grownSlots), ordering: .relaxed)
        if let error = provided.growthError, !growthErrorLogged {
            growthErrorLogged = true
            let note = "the buffer pool stopped growing at \(provided.grownSlots) of \(pool.slotCount) slots: \(error); "
                + "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in systemd) or lower --max-memory"
            logger.error("\(note)")
        }
    }

    func armAccept() -> Bool {
        guard listenerFD >= 0 else { return false }
        ring.prepareAcceptMultishot(fd: listenerFD, tag: WorkerCore<Worker>.acceptTag)
        return true
    }

    func cancelAccept() {
        ring.prepareCancel(target: WorkerCore<Worker>.acceptTag, tag: WorkerCore<Worker>.acceptCancelTag)
    }

    var buffersLent: Bool { provided.lent > 0 }

    @inline(__always)
    func bufferTaken(_ slot: UInt32) { provided.taken(slot) }

    func refuse(fd: Int32) {
        sockets.forgetLoopRecord(fd)
        Glibc.close(fd)
    }

    func closeListener() {
        guard listenerFD >= 0 else { return }
        Glibc.close(listenerFD)
        listenerFD = -1
    }

    // MARK: - SessionIO

    func openSocket(target: Int) -> Int32 { sockets.openSocket(target: target) }

    func connect(fd: Int32, target: Int, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        let (address, length) = sockets.connecting(fd: fd, target: target)
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
        ring.prepareSendMessage(fd: fd, message: sockets.gatherMessage(tag: tag, queue: queue, chunks: chunks, pool: pool), tag: tag)
    }

    func shutdownWrite(fd: Int32, tag: CompletionTag) {
        sockets.shuttingDown(fd: fd, tag: tag)
        ring.prepareShutdown(fd: fd, how: Int32(SHUT_WR), tag: tag)
    }

    func cancel(fd: Int32, tag: CompletionTag) {
        ring.prepareCancel(fd: fd, tag: tag)
    }

    func close(fd: Int32, tag: CompletionTag) {
        sockets.forgetLoopRecord(fd)
        ring.prepareClose(fd: fd, tag: tag)
    }

    @inline(__always)
    func recycle(slot: UInt32) {
        provided.provide(slot)
    }
}
