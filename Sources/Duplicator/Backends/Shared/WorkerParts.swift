import Ring

/// What a worker's logic runs on, built alike by both backends: the
/// sessions' shared context, the session table, the sessions waiting for
/// buffers and their timers.
struct WorkerParts {
    let context: SessionContext
    let table: SessionTable
    let waiters: BufferWaiters
    let timers: SessionTimers
    /// The clock in microseconds is read each round: sessions have mirror
    /// timers, or record arrival times (`--dump-dir`).
    var readsMicroseconds: Bool { follower.readsMicroseconds }
    /// Which configuration generation new sessions take (`ConfigReload.swift`).
    let follower: GenerationFollower
    /// `--accept-gathering auto`: told each tick how busy this worker was.
    let acceptGathering: AcceptGathering?

    static func readsMicroseconds(_ config: Config, dumping: Bool) -> Bool {
        (!config.mirrors.isEmpty && (config.mirrorBatchBytes > 0 || config.mirrorTurns > 0)) || dumping
    }

    init(_ environment: WorkerEnvironment, pool: BufferPool) throws {
        let config = environment.config
        acceptGathering = environment.acceptGathering
        context = SessionContext(limits: config.slotLimits, pool: pool, stats: environment.stats,
                                 mirrorHealth: environment.mirrorHealth, problems: environment.control.problems)
        context.dumpSink = config.slotLimits.dumpBytes > 0 ? environment.dumpSink : nil
        if let recording = config.recording, config.slotLimits.recordBytes > 0 {
            context.recordSink = environment.recordSink
            context.recordSampling = RecordSampling(percent: recording.samplePercent)
        }
        // Admission control: the table holds only as many sessions as the
        // pool can serve at once, whatever their peers do.
        table = try SessionTable(capacity: config.sessionsPerWorker, context: context)
        waiters = BufferWaiters(capacity: config.sessionsPerWorker)
        timers = SessionTimers(capacity: config.sessionsPerWorker, batchSlackUs: config.mirrorBatchWakeSlackUs)
        follower = GenerationFollower(readsMicroseconds: Self.readsMicroseconds(config, dumping: context.dumpSink != nil
                                                                                    || context.recordSink != nil))
    }

    func core<Backend: WorkerBackend>(_ environment: WorkerEnvironment) -> WorkerCore<Backend> {
        let config = environment.config
        return WorkerCore(context: context, table: table, waiters: waiters, timers: timers,
                          idleTimeoutMs: config.idleTimeoutMs, drainTimeoutMs: config.drainTimeoutMs, stats: environment.stats,
                          allStats: environment.allStats,
                          mirrorNames: config.mirrors.map(\.text) + Array(repeating: "", count: config.mirrorSlotCount - config.mirrors.count),
                          tls: config.tlsContexts(), logger: environment.logger)
    }
}
