/// `--zerocopy`: when sends are zero-copy (io_uring's `SEND_ZC`/`SENDMSG_ZC`
/// from the registered pool). Towards a peer on this host the kernel copies
/// anyway, and the notification makes it slower (BENCHMARKS.md).
public enum ZeroCopyMode: String, Sendable, CaseIterable {
    /// Sends of `zeroCopyBytesMin` or more, to peers not on this host, where the kernel has them.
    case auto
    /// Every send from the pool; refused at start where the kernel has none.
    case on
    case off
}

/// `--accept-gathering`: whether new clients go to as few workers as keep up.
public enum AcceptGatheringMode: String, Sendable, CaseIterable {
    /// One worker while every worker is far from busy; all, by the kernel's hash, once one is busy.
    case auto
    /// The kernel's hash over every worker's listener, always.
    case off
}

/// Everything the proxy runs with, validated. Built by the CLI or by a test.
public struct Config: Sendable {
    public var listen: Endpoint
    public var main: Endpoint
    public var mirrors: [Endpoint]
    /// Per mirror, the percentage of sessions it gets (`-m ADDR@P%`); empty: all.
    public var mirrorSamplePercents: [Double] = []
    /// Mirrors a reload may configure at most (`--mirror-slots`): each
    /// worker's sessions are sized for this many at start; nil: `mirrors.count`.
    public var mirrorSlots: Int?
    /// The mirror slots each worker is sized for (see `MirrorSlots`).
    public var mirrorSlotCount: Int { max(mirrors.count, mirrorSlots ?? 0) }
    /// goduplicator's `-t`: a mirror that has not connected by then is dropped for the session.
    public var mirrorConnectTimeoutMs = Defaults.mirrorConnectTimeoutMs
    /// 0: the kernel's own (minutes). Main failing to connect closes the client.
    public var mainConnectTimeoutMs = Defaults.mainConnectTimeoutMs
    /// Bytes per pool slot: the most one receive takes.
    public var slotSize = Defaults.slotSize
    /// The buffer memory of all workers together: the bound on what the
    /// pools may grow to (they start small and grow with the load).
    public var maxMemoryBytes = Defaults.maxMemoryBytes
    /// Pool slots per worker; nil: as many as `maxMemoryBytes` allows.
    public var poolSlots: Int?
    /// A mirror more than this many bytes behind is cut for the session.
    public var backlogBytesMax = Defaults.backlogBytesMax
    /// ... or more than this many receives behind.
    public var backlogChunksMax = Defaults.backlogChunksMax
    /// Session table size per worker, at most; `sessionsPerWorker` may admit
    /// fewer. Clients beyond it are closed at once.
    public var sessionsMax = Defaults.sessionsMax
    /// A session in which no byte moved between client and main for this
    /// long is closed; 0: never.
    public var idleTimeoutMs = Defaults.idleTimeoutMs
    public var threads = 1
    /// How long mirrors may flush after their client's session ended.
    public var mirrorLingerMs = Defaults.mirrorLingerMs
    /// A mirror's replies wake the worker only once this many bytes wait
    /// (SO_RCVLOWAT on the mirror's socket); its EOF and errors wake it at
    /// once. 0: every reply wakes it.
    public var mirrorDiscardBatchBytes = Defaults.mirrorDiscardBatchBytes
    /// `--compare`: compare each mirror's reply stream with main's, per session.
    public var compare = false
    /// With `compare`: what each (session, mirror) may keep of the stream
    /// that runs ahead: seven eighths as bytes, the rest as block digests
    /// that reach 64 times as far; a pair further apart is `incomplete`.
    /// Reserved per session at start (address space; resident only where a
    /// mirror lags).
    public var compareWindowBytes = Defaults.compareWindowBytes
    /// `--dump-dir`: with `compare`, where a pcapng file is written for each
    /// (session, mirror) whose replies differ from main's; nil: nothing recorded.
    public var dumpDirectory: String?
    /// `--record-dir` and its bounds; nil: no recording.
    public var recording: RecordingConfig?
    /// What a dump keeps of each direction; the rest is counted, not kept.
    public var dumpBytes = Defaults.dumpBytes
    /// Dumps written at most; later ones are counted (`skipped_limit`).
    public var dumpMaxFiles = Defaults.dumpMaxFiles
    /// Bytes of dumps waiting for the disk at most (`DumpWriter`).
    public var dumpQueueBytes = Defaults.dumpQueueBytes
    /// A mirror's queued bytes go out together, in one gathered send, once
    /// this many wait or the oldest has waited `mirrorBatchDelayUs`: its
    /// server wakes once per batch, not once per client receive. 0: off,
    /// one send per receive as it arrives. Measured in BENCHMARKS.md.
    public var mirrorBatchBytes = Defaults.mirrorBatchBytes
    /// 0: gather what queued behind a send in flight, never wait.
    public var mirrorBatchDelayUs = Defaults.mirrorBatchDelayUs
    /// The client's first turns (bytes after main replied) that a mirror
    /// gets only once it has answered the turn before, as main did: SSL and
    /// STARTTLS negotiations and greetings keep their order. 0: none.
    public var mirrorTurns = Defaults.mirrorTurns
    /// A mirror that has not answered a turn by then gets the next anyway.
    public var mirrorTurnTimeoutUs = Defaults.mirrorTurnTimeoutUs
    /// How long a graceful stop waits for live sessions.
    public var drainTimeoutMs = Defaults.drainTimeoutMs
    public var ringEntries = 1024
    /// A CQ large enough that bursts never overflow it.
    var completionEntries: Int { max(16384, ringEntries * 4) }
    /// listen(2)'s queue of connections not yet accepted (not a mirror's backlog).
    public var listenQueueLength = 4096
    /// Tuning: the ring setup to try first. SINGLE_ISSUER|DEFER_TASKRUN runs
    /// completions' task work in order and only when the worker waits; with
    /// COOP_TASKRUN, 1000 busy connections saw a p99 ten times higher
    /// (BENCHMARKS.md, "Tuning").
    public var ringMode = RingMode.deferTaskrun
    /// The workers' IO: io_uring, or epoll where io_uring is forbidden or missing.
    public var backend = Defaults.backend
    /// Tuning: wait for this many completions per wakeup, but no longer than
    /// `waitBatchTimeoutUs` before settling for one. 1: wake on every completion.
    public var waitBatch = Defaults.waitBatch
    /// `--accept-gathering`: new clients to one worker below saturation
    /// (`AcceptGathering`), or always by the kernel's hash.
    public var acceptGathering = Defaults.acceptGathering
    /// When the workers spread and gather again (not a flag: the tests set them).
    public var acceptGatheringThresholds = AcceptGatheringPolicy.Thresholds()
    public var waitBatchTimeoutUs = Defaults.waitBatchTimeoutUs
    public var mirrorFailuresBeforeBackoff = Defaults.mirrorFailuresBeforeBackoff
    public var mirrorBackoffInitialMs = Defaults.mirrorBackoffInitialMs
    public var mirrorBackoffMaxMs = Defaults.mirrorBackoffMaxMs
    /// Put a PROXY protocol header of this version before the client's bytes
    /// to main and to every mirror (the same header to each); nil: none.
    public var sendProxy: ProxyProtocol.Version?
    /// Expect a PROXY protocol header (v1 or v2) from a load balancer at the
    /// start of every client connection; the client's address is taken from
    /// it, and it is not forwarded as client bytes.
    public var acceptProxy = false
    /// With `acceptProxy`, a client whose whole header has not arrived by then is closed.
    public var proxyHeaderTimeoutMs = Defaults.proxyHeaderTimeoutMs
    /// Zero-copy sends from the registered pool: `auto` only for sends of
    /// `zeroCopyBytesMin` or more to peers not on this host, `on` for every
    /// send (an error at start where the kernel has none), `off` never.
    public var zeroCopy = Defaults.zeroCopy
    public var zeroCopyBytesMin = Defaults.zeroCopyBytesMin
    /// `--tls-cert`: terminate TLS from clients; main and the mirrors get
    /// the plaintext. Nil: the client's bytes go as they come.
    public var tls: TLSSettings?
    /// `--forward-tls`: TLS towards main, verified; nil: plain.
    public var forwardTLS: UpstreamTLSSettings?
    /// `--mirror-tls`: TLS towards every mirror, verified; nil: plain.
    public var mirrorTLS: UpstreamTLSSettings?
    /// Free slots lent to the kernel at a time, at most (see `ProvidedBuffers`).
    public var providedWindowSlots = 512

    /// The most slots a worker's pool has: a provided buffer's id is 16 bits,
    /// and a buffer ring has at most 32768 entries.
    public static let poolSlotsMax = 32768
    /// Slots one session can hold on main's path: a full read-ahead window
    /// each way (a client that stops reading pins its queue, and so does a
    /// main that stops reading). Admission reserves this much per session.
    static let sessionSlotsMax = 2 * readAheadChunks
    public static let readAheadChunks = 2

    /// SO_RCVLOWAT of mirror sockets. With `--compare` each reply is read
    /// as it comes: replies held back in the kernel would let main's stream
    /// run ahead past the comparison window.
    var mirrorReceiveLowWaterBytes: Int { compare ? 0 : mirrorDiscardBatchBytes }

    /// The most memory `--dump-dir`'s recordings may take, all workers
    /// together: `dumpBytes` per direction (client, main, each mirror) per
    /// admitted session, taken only as sessions carry bytes.
    public var dumpMemoryBytesMax: Int {
        dumpDirectory != nil && compare ? threads * sessionsPerWorker * (2 + mirrors.count) * dumpBytes : 0
    }

    /// The most memory `--compare` may use, all workers together (one window
    /// per session and mirror); 0 without it.
    public var compareMemoryBytesMax: Int {
        compare ? threads * sessionsPerWorker * mirrors.count * compareWindowBytes : 0
    }

    /// Slots in each worker's pool.
    public var poolSlotsPerWorker: Int {
        poolSlots ?? min(Self.poolSlotsMax, maxMemoryBytes / max(1, threads) / max(1, slotSize))
    }

    /// The window lent to the kernel: a quarter of a small pool, so that many
    /// workers with small pools do not each take their whole pool at start.
    var providedWindowSlotsPerWorker: Int {
        min(providedWindowSlots, max(64, poolSlotsPerWorker / 4))
    }

    /// Slots of a pool that mirrors may hold once main is done with them:
    /// half, so main's path always has the rest (none without mirrors).
    public var mirrorShareSlots: Int { mirrorSlotCount == 0 ? 0 : max(1, poolSlotsPerWorker / 2) }

    /// Sessions a worker admits: as many as can each hold their
    /// `sessionSlotsMax` at once beside the mirrors' share, so that no set of
    /// sessions, however stalled their peers, can take the slots another
    /// session needs. Clients beyond are refused (closed at once, counted).
    public var sessionsPerWorker: Int {
        max(1, min(sessionsMax, (poolSlotsPerWorker - mirrorShareSlots) / Self.sessionSlotsMax))
    }

    public init(listen: Endpoint, main: Endpoint, mirrors: [Endpoint]) {
        self.listen = listen
        self.main = main
        self.mirrors = mirrors
    }

    public enum RingMode: String, Sendable, CaseIterable {
        case deferTaskrun = "defer", coopTaskrun = "coop", plain
    }

    /// `auto`: io_uring when a ring can be set up and the pool locked, else
    /// epoll (saying why); `io_uring`: that, or an error; `epoll`: epoll.
    public enum Backend: String, Sendable, CaseIterable {
        case auto, ioUring = "io_uring", epoll
    }

    public func validate() throws(ConfigError) {
        try validateOperatorLimits()
        guard (1...64).contains(waitBatch) else { throw ConfigError("--wait-batch must be from 1 to 64, got \(waitBatch)") }
        guard (1...100_000).contains(waitBatchTimeoutUs) else {
            throw ConfigError("--wait-batch-timeout must be from 1us to 100ms")
        }
        if !mirrorSamplePercents.isEmpty {
            guard mirrorSamplePercents.count == mirrors.count else {
                throw ConfigError("\(mirrorSamplePercents.count) sampling percentages for \(mirrors.count) mirrors")
            }
            for percent in mirrorSamplePercents where !(percent > 0 && percent <= 100) {
                throw ConfigError("a mirror's sampling percentage must be above 0% and at most 100%, got \(percent)%")
            }
        }
        guard mirrors.count <= 64 else { throw ConfigError("at most 64 mirrors, got \(mirrors.count)") }
        guard mirrorSlotCount <= 64 else { throw ConfigError("--mirror-slots must be at most 64, got \(mirrorSlotCount)") }
        guard (4096...(1 << 20)).contains(slotSize) else {
            throw ConfigError("--slot-size must be from 4KiB to 1MiB, got \(slotSize)")
        }
        guard maxMemoryBytes >= 1 << 20 else {
            throw ConfigError("--max-memory must be at least 1MiB, got \(maxMemoryBytes) bytes")
        }
        guard (Self.sessionSlotsMax...Self.poolSlotsMax).contains(poolSlotsPerWorker) else {
            if let poolSlots {
                throw ConfigError("pool slots must be from \(Self.sessionSlotsMax) to \(Self.poolSlotsMax), got \(poolSlots)")
            }
            throw ConfigError("--max-memory \(maxMemoryBytes) bytes gives each of \(threads) threads "
                + "\(poolSlotsPerWorker) slots of \(slotSize) bytes; each needs at least \(Self.sessionSlotsMax): "
                + "raise --max-memory or lower --threads or --slot-size")
        }
        guard idleTimeoutMs >= 0 else { throw ConfigError("durations must not be negative") }
        guard providedWindowSlots >= 1 else { throw ConfigError("the provided window needs a slot") }
        guard (0...(1 << 20)).contains(mirrorDiscardBatchBytes) else {
            throw ConfigError("--mirror-discard-batch must be from 0 to 1MiB, got \(mirrorDiscardBatchBytes)")
        }
        guard (4096...(16 << 20)).contains(compareWindowBytes) else {
            throw ConfigError("--compare-window must be from 4KiB to 16MiB, got \(compareWindowBytes)")
        }
        try recording?.validate()
        if let dumpDirectory {
            guard compare else { throw ConfigError("--dump-dir \(dumpDirectory): needs --compare (dumps are of replies that differ)") }
            guard !mirrors.isEmpty else { throw ConfigError("--dump-dir \(dumpDirectory): needs a mirror to compare") }
        }
        guard (1...(64 << 20)).contains(dumpBytes) else {
            throw ConfigError("--dump-bytes must be from 1 byte to 64MiB, got \(dumpBytes)")
        }
        guard (1...1_000_000).contains(dumpMaxFiles) else {
            throw ConfigError("--dump-max-files must be from 1 to 1000000, got \(dumpMaxFiles)")
        }
        guard (0...(16 << 20)).contains(mirrorBatchBytes) else {
            throw ConfigError("--mirror-batch-bytes must be from 0 to 16MiB, got \(mirrorBatchBytes)")
        }
        guard (0...100_000).contains(mirrorBatchDelayUs) else {
            throw ConfigError("--mirror-batch-delay must be from 0 to 100ms")
        }
        guard (0...64).contains(mirrorTurns) else { throw ConfigError("--mirror-turns must be from 0 to 64, got \(mirrorTurns)") }
        guard (1_000...60_000_000).contains(mirrorTurnTimeoutUs) else {
            throw ConfigError("--mirror-turn-timeout \(DurationParser.text(nanoseconds: Int64(mirrorTurnTimeoutUs) * 1_000)): "
                + "must be from 1ms to 1m")
        }
        guard backlogBytesMax >= 1 else { throw ConfigError("--backlog must be positive") }
        guard (1...4096).contains(backlogChunksMax) else {
            throw ConfigError("--backlog-chunks must be from 1 to 4096, got \(backlogChunksMax)")
        }
        guard (1...1_000_000).contains(sessionsMax) else {
            throw ConfigError("--max-sessions must be from 1 to 1000000, got \(sessionsMax)")
        }
        guard (1...256).contains(threads) else { throw ConfigError("--threads must be from 1 to 256, got \(threads)") }
        guard (1...600_000).contains(proxyHeaderTimeoutMs) else {
            throw ConfigError("--proxy-header-timeout must be from 1ms to 10m, got \(proxyHeaderTimeoutMs)ms")
        }
        guard mirrorConnectTimeoutMs >= 0, mainConnectTimeoutMs >= 0, mirrorLingerMs >= 0, drainTimeoutMs >= 0 else {
            throw ConfigError("durations must not be negative")
        }
    }

    /// A mirror batch's wakeup may come this much after its deadline (a
    /// quarter of `--mirror-batch-delay`), so that the worker's next wake for
    /// traffic sends it instead; sessions count their deadline that much
    /// earlier, so no byte waits longer than `--mirror-batch-delay`.
    public var mirrorBatchWakeSlackUs: Int { mirrorBatchDelayUs / 4 }

    var limits: SessionLimits {
        var limits = SessionLimits(mirrorCount: mirrors.count, mainConnectTimeoutMs: mainConnectTimeoutMs,
                      mirrorConnectTimeoutMs: mirrorConnectTimeoutMs, backlogBytesMax: backlogBytesMax,
                      backlogChunksMax: backlogChunksMax, readAheadChunks: Self.readAheadChunks,
                      mirrorLingerMs: mirrorLingerMs, idleTimeoutMs: idleTimeoutMs,
                      mirrorFailuresBeforeBackoff: mirrorFailuresBeforeBackoff,
                      mirrorBackoffInitialMs: mirrorBackoffInitialMs, mirrorBackoffMaxMs: mirrorBackoffMaxMs,
                      sendProxy: sendProxy, acceptProxy: acceptProxy, proxyHeaderTimeoutMs: proxyHeaderTimeoutMs,
                      mirrorBatchBytes: mirrorBatchBytes,
                      mirrorBatchDelayUs: mirrorBatchDelayUs - mirrorBatchWakeSlackUs,
                      mirrorTurns: mirrorTurns, mirrorTurnTimeoutUs: mirrorTurnTimeoutUs)
        limits.mirrorSampleThresholds = mirrorSamplePercents.map { MirrorSampling.threshold(percent: $0) }
        limits.compareWindowBytes = compare && !mirrors.isEmpty ? compareWindowBytes : 0
        limits.dumpBytes = limits.compareWindowBytes > 0 && dumpDirectory != nil ? dumpBytes : 0
        limits.recordBytes = recording?.bytesPerDirection ?? 0
        return limits
    }
}
