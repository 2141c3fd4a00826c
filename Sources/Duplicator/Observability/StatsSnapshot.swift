/// The counters of every worker added up, at one moment.
public struct StatsSnapshot: Sendable, Equatable {
    public struct Mirror: Sendable, Equatable {
        public var name: String
        public var sessionsMirrored: UInt64 = 0
        public var sessionsSampledOut: UInt64 = 0
        public var bytesSent: UInt64 = 0
        public var sessionsCutForLag: UInt64 = 0
        public var sessionsCutForPoolShare: UInt64 = 0
        public var bytesMissed: UInt64 = 0
        public var connectFailures: UInt64 = 0
        public var connectTimeouts: UInt64 = 0
        public var errors: UInt64 = 0
        public var sessionsSkipped: UInt64 = 0
        public var replyBytes: UInt64 = 0
        public var discards: UInt64 = 0
        public var sends: UInt64 = 0
        /// Workers that are not trying this mirror now (back-off after failures).
        public var workersBackingOff: UInt64 = 0
        public var sessionsRetired: UInt64 = 0
        /// `--compare`: (session, mirror) pairs per verdict, by `ReplyComparison.Verdict.rawValue`.
        public var compared = [UInt64](repeating: 0, count: ReplyComparison.Verdict.allCases.count)
        /// Diverged pairs per first-divergence offset bucket (`ComparisonStats`), not cumulative.
        public var divergenceOffsetBuckets = [UInt64](repeating: 0, count: ComparisonStats.divergenceOffsetBounds.count + 1)
        public var divergenceOffsetSum: UInt64 = 0
        /// `--dump-dir`: dumps of this mirror's differing pairs, by `DumpWriter.Result.rawValue`.
        public var dumps = [UInt64](repeating: 0, count: DumpWriter.Result.allCases.count)
        /// Bytes past `--dump-bytes` left out of the dumps written.
        public var dumpTruncatedBytes: UInt64 = 0

        public func compared(_ verdict: ReplyComparison.Verdict) -> UInt64 { compared[verdict.rawValue] }
    }

    public var sessionsAccepted: UInt64 = 0
    /// The IO backend the workers run on (`io_uring`, `epoll`); empty before they start.
    public var backend = ""
    /// `--dump-dir` is on (the dump metrics are shown).
    public var dumping = false
    /// `--record-dir`: recorded sessions by `RecordWriter.Result.rawValue`; nil: not recording.
    public var recordings: [UInt64]?
    public var recordingTruncatedBytes: UInt64 = 0
    public var sessionsActive: UInt64 = 0
    public var sessionsRejected: UInt64 = 0
    public var sessionsCompleted: UInt64 = 0
    public var sessionsEndedByClientError: UInt64 = 0
    public var sessionsEndedByMainConnectFailure: UInt64 = 0
    public var sessionsEndedByMainError: UInt64 = 0
    public var sessionsEndedByIdleTimeout: UInt64 = 0
    public var sessionsAborted: UInt64 = 0
    public var sessionsEndedByBadProxyHeader: UInt64 = 0
    public var sessionsEndedByTLSHandshake: UInt64 = 0
    public var tlsHandshakesActive: UInt64 = 0
    public var tlsErrors: UInt64 = 0
    public var acceptErrors: UInt64 = 0
    public var loopsRefused: UInt64 = 0
    public var completionsUnknown: UInt64 = 0
    public var bytesClientToMain: UInt64 = 0
    public var bytesMainToClient: UInt64 = 0
    public var poolSlotsInUse: UInt64 = 0
    public var poolSlotsGrown: UInt64 = 0
    public var poolSlots: UInt64 = 0
    public var poolExhausted: UInt64 = 0
    public var zeroCopySends: UInt64 = 0
    public var zeroCopyCopied: UInt64 = 0
    public var workers = 0
    /// Clients each worker accepted, in worker order (`--accept-gathering` shows in it).
    public var workerSessionsAccepted: [UInt64] = []
    /// Each worker's busy fraction over its last tick, in thousandths (its thread's CPU time).
    public var workerBusyPermille: [UInt64] = []
    /// `--accept-gathering auto`: 1 while new clients go to one worker, 0 while
    /// they spread; nil when the kernel's hash always places them.
    public var acceptGathered: UInt64?
    public var mirrors: [Mirror]
    /// Every mirror the process has had (removed ones too, which `mirrors`
    /// leaves out), for the copies a removal let finish.
    public var everyMirror: [Mirror] = []

    public init(workers: [WorkerStats], mirrorNames: [String], poolSlotsPerWorker: Int) {
        mirrors = mirrorNames.map { Mirror(name: $0) }
        self.workers = workers.count
        poolSlots = UInt64(poolSlotsPerWorker * workers.count)
        workerSessionsAccepted = workers.map { $0.sessionsAccepted.value }
        workerBusyPermille = workers.map { $0.busyPermille.value }
        for worker in workers {
            sessionsAccepted += worker.sessionsAccepted.value
            sessionsActive += worker.sessionsActive.value
            sessionsRejected += worker.sessionsRejected.value
            sessionsCompleted += worker.sessionsCompleted.value
            sessionsEndedByClientError += worker.sessionsEndedByClientError.value
            sessionsEndedByMainConnectFailure += worker.sessionsEndedByMainConnectFailure.value
            sessionsEndedByMainError += worker.sessionsEndedByMainError.value
            sessionsEndedByIdleTimeout += worker.sessionsEndedByIdleTimeout.value
            sessionsAborted += worker.sessionsAborted.value
            sessionsEndedByBadProxyHeader += worker.sessionsEndedByBadProxyHeader.value
            sessionsEndedByTLSHandshake += worker.sessionsEndedByTLSHandshake.value
            tlsHandshakesActive += worker.tlsHandshakesActive.value
            tlsErrors += worker.tlsErrors.value
            acceptErrors += worker.acceptErrors.value
            loopsRefused += worker.loopsRefused.value
            completionsUnknown += worker.completionsUnknown.value
            bytesClientToMain += worker.bytesClientToMain.value
            bytesMainToClient += worker.bytesMainToClient.value
            poolSlotsInUse += worker.poolSlotsInUse.value
            poolSlotsGrown += worker.poolSlotsGrown.value
            poolExhausted += worker.poolExhausted.value
            zeroCopySends += worker.zeroCopySends.value
            zeroCopyCopied += worker.zeroCopyCopied.value
            for (index, mirror) in worker.mirrors.enumerated() where index < mirrors.count {
                mirrors[index].sessionsMirrored += mirror.sessionsMirrored.value
                mirrors[index].sessionsSampledOut += mirror.sessionsSampledOut.value
                mirrors[index].bytesSent += mirror.bytesSent.value
                mirrors[index].sessionsCutForLag += mirror.sessionsCutForLag.value
                mirrors[index].sessionsCutForPoolShare += mirror.sessionsCutForPoolShare.value
                mirrors[index].bytesMissed += mirror.bytesMissed.value
                mirrors[index].connectFailures += mirror.connectFailures.value
                mirrors[index].connectTimeouts += mirror.connectTimeouts.value
                mirrors[index].errors += mirror.errors.value
                mirrors[index].sessionsSkipped += mirror.sessionsSkipped.value
                mirrors[index].replyBytes += mirror.replyBytes.value
                mirrors[index].discards += mirror.discards.value
                mirrors[index].sends += mirror.sends.value
                mirrors[index].workersBackingOff += mirror.backingOff.value
                mirrors[index].sessionsRetired += mirror.sessionsRetired.value
                for verdict in ReplyComparison.Verdict.allCases {
                    mirrors[index].compared[verdict.rawValue] += mirror.comparisons.count(verdict)
                }
                for (bucket, count) in mirror.comparisons.divergenceOffsetBuckets.enumerated() {
                    mirrors[index].divergenceOffsetBuckets[bucket] += count
                }
                mirrors[index].divergenceOffsetSum += mirror.comparisons.divergenceOffsetSum.value
            }
        }
    }

    public var sessionsEnded: UInt64 {
        sessionsCompleted + sessionsEndedByClientError + sessionsEndedByMainConnectFailure
            + sessionsEndedByMainError + sessionsEndedByIdleTimeout + sessionsAborted + sessionsEndedByBadProxyHeader
            + sessionsEndedByTLSHandshake
    }
}

extension Proxy {
    public func snapshot() -> StatsSnapshot {
        // Counters are kept per mirror slot; the page shows the current configuration's mirrors.
        let generation = currentGeneration
        var snapshot = StatsSnapshot(workers: stats, mirrorNames: generation.slotNames,
                                     poolSlotsPerWorker: config.poolSlotsPerWorker)
        if let backend { snapshot.backend = backend.kind.rawValue }
        if let mode = acceptGatheringMode { snapshot.acceptGathered = mode == .gathered ? 1 : 0 }
        if let dumpWriter {
            snapshot.dumping = true
            for index in generation.mirrorSlots {
                for result in DumpWriter.Result.allCases {
                    snapshot.mirrors[index].dumps[result.rawValue] = dumpWriter.count(mirror: index, result)
                }
                snapshot.mirrors[index].dumpTruncatedBytes = dumpWriter.truncated(mirror: index)
            }
        }
        if let recordWriter {
            snapshot.recordings = RecordWriter.Result.allCases.map { recordWriter.count($0) }
            snapshot.recordingTruncatedBytes = recordWriter.truncated
        }
        snapshot.everyMirror = snapshot.mirrors.filter { !$0.name.isEmpty }
        snapshot.mirrors = generation.mirrorSlots.map { snapshot.mirrors[$0] }
        return snapshot
    }
}
