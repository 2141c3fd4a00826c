/// Everything the proxy runs with, validated. Built by the CLI or by a test.
public struct Config: Sendable {
    public var listen: Endpoint
    public var main: Endpoint
    public var mirrors: [Endpoint]
    /// goduplicator's `-t`: a mirror that has not connected by then is dropped for the session.
    public var mirrorConnectTimeoutMs = 500
    /// 0: the kernel's own (minutes). Main failing to connect closes the client.
    public var mainConnectTimeoutMs = 10_000
    /// Bytes per pool slot: the most one receive takes.
    public var slotSize = 16 * 1024
    /// Pool slots per worker (a power of two, at most 16384).
    public var poolSlots = 1024
    /// A mirror more than this many bytes behind is cut for the session.
    public var backlogBytesMax = 4 << 20
    /// ... or more than this many receives behind.
    public var backlogChunksMax = 256
    /// Session table size per worker; clients beyond it are closed at once.
    public var sessionsMax = 16384
    public var threads = 1
    /// How long mirrors may flush after their client's session ended.
    public var mirrorLingerMs = 2_000
    /// A mirror's replies wake the worker only once this many bytes wait
    /// (SO_RCVLOWAT on the mirror's socket); its EOF and errors wake it at
    /// once. 0: every reply wakes it.
    public var mirrorDrainBatchBytes = 64 * 1024
    /// How long a graceful stop waits for live sessions.
    public var drainTimeoutMs = 5_000
    public var ringEntries = 1024
    /// A CQ large enough that bursts never overflow it.
    var completionEntries: Int { max(16384, ringEntries * 4) }
    public var listenBacklog = 4096
    /// Tuning: the ring setup to try first. SINGLE_ISSUER|DEFER_TASKRUN runs
    /// completions' task work in order and only when the worker waits; with
    /// COOP_TASKRUN, 1000 busy connections saw a p99 ten times higher
    /// (BENCHMARKS.md, "Tuning").
    public var ringMode = RingMode.deferTaskrun
    /// Tuning: wait for this many completions per wakeup, but no longer than
    /// `waitBatchTimeoutUs` before settling for one. 1: wake on every completion.
    public var waitBatch = 1
    public var waitBatchTimeoutUs = 50
    public var mirrorFailuresBeforeBackoff = 3
    public var mirrorBackoffInitialMs = 250
    public var mirrorBackoffMaxMs = 30_000

    public init(listen: Endpoint, main: Endpoint, mirrors: [Endpoint]) {
        self.listen = listen
        self.main = main
        self.mirrors = mirrors
    }

    public enum RingMode: String, Sendable, CaseIterable {
        case deferTaskrun = "defer", coopTaskrun = "coop", plain
    }

    public func validate() throws(ConfigError) {
        guard (1...64).contains(waitBatch) else { throw ConfigError("--wait-batch must be from 1 to 64, got \(waitBatch)") }
        guard (1...100_000).contains(waitBatchTimeoutUs) else {
            throw ConfigError("--wait-batch-timeout must be from 1us to 100ms")
        }
        guard mirrors.count <= 64 else { throw ConfigError("at most 64 mirrors, got \(mirrors.count)") }
        guard (4096...(1 << 20)).contains(slotSize) else {
            throw ConfigError("--slot-size must be from 4KiB to 1MiB, got \(slotSize)")
        }
        // 16384: the kernel registers at most that many fixed buffers.
        guard (2...16384).contains(poolSlots), poolSlots & (poolSlots - 1) == 0 else {
            throw ConfigError("--pool-slots must be a power of two from 2 to 16384, got \(poolSlots)")
        }
        guard (0...(1 << 20)).contains(mirrorDrainBatchBytes) else {
            throw ConfigError("--mirror-drain-batch must be from 0 to 1MiB, got \(mirrorDrainBatchBytes)")
        }
        guard backlogBytesMax >= 1 else { throw ConfigError("--backlog must be positive") }
        guard (1...4096).contains(backlogChunksMax) else {
            throw ConfigError("--backlog-chunks must be from 1 to 4096, got \(backlogChunksMax)")
        }
        guard (1...1_000_000).contains(sessionsMax) else {
            throw ConfigError("--max-sessions must be from 1 to 1000000, got \(sessionsMax)")
        }
        guard (1...256).contains(threads) else { throw ConfigError("--threads must be from 1 to 256, got \(threads)") }
        guard mirrorConnectTimeoutMs >= 0, mainConnectTimeoutMs >= 0, mirrorLingerMs >= 0, drainTimeoutMs >= 0 else {
            throw ConfigError("durations must not be negative")
        }
    }

    var limits: SessionLimits {
        SessionLimits(mirrorCount: mirrors.count, mainConnectTimeoutMs: mainConnectTimeoutMs,
                      mirrorConnectTimeoutMs: mirrorConnectTimeoutMs, backlogBytesMax: backlogBytesMax,
                      backlogChunksMax: backlogChunksMax, readAheadChunks: 2, mirrorLingerMs: mirrorLingerMs,
                      mirrorFailuresBeforeBackoff: mirrorFailuresBeforeBackoff,
                      mirrorBackoffInitialMs: mirrorBackoffInitialMs, mirrorBackoffMaxMs: mirrorBackoffMaxMs)
    }
}
