import Ring

/// The settings a session follows, fixed at start.
public struct SessionLimits: Sendable {
    public var mirrorCount: Int
    /// 0: the kernel's own connect timeout.
    public var mainConnectTimeoutMs: Int
    public var mirrorConnectTimeoutMs: Int
    /// A mirror whose unsent backlog would pass this many bytes is cut for the session.
    public var backlogBytesMax: Int
    /// ... or this many pending receives (each holds a slot).
    public var backlogChunksMax: Int
    /// Receives from one side allowed ahead of the other side's sends: the
    /// window of end-to-end back-pressure.
    public var readAheadChunks: Int
    /// How long mirrors may go on flushing and discarding after the client's
    /// session ended, before they are closed.
    public var mirrorLingerMs: Int
    /// A session in which nothing moved between client and main for this long ends; 0: never.
    public var idleTimeoutMs: Int
    /// Consecutive connect failures after which a mirror is not tried for a while.
    public var mirrorFailuresBeforeBackoff: Int
    public var mirrorBackoffInitialMs: Int
    public var mirrorBackoffMaxMs: Int
    /// The PROXY protocol header main and every mirror get first; nil: none.
    public var sendProxy: ProxyProtocol.Version?
    /// Every client starts with a PROXY protocol header; main and mirrors
    /// are connected only once it has arrived.
    public var acceptProxy: Bool
    /// ... within this long, or the client is closed.
    public var proxyHeaderTimeoutMs: Int
    /// Per mirror, the share of sessions it gets (`MirrorSampling.threshold`);
    /// empty: every mirror gets every session.
    public var mirrorSampleThresholds: [UInt64] = []
    /// Bit `i` set: mirror slot `i` (below `mirrorCount`) is not in this
    /// configuration (removed by a reload, or not taken yet): its leg stays
    /// closed and nothing is counted for it. 0 without reloads.
    public var mirrorSlotsAbsent: UInt64 = 0
    /// `--compare`: bytes each (session, mirror) may keep of the stream that
    /// runs ahead, to compare the mirror's replies with main's; 0: off.
    public var compareWindowBytes = 0
    /// `--dump-dir`: what a session records of each direction, for a pcapng
    /// dump of the pairs whose replies differ (`SessionRecording`); 0: off,
    /// nothing recorded or allocated.
    public var dumpBytes = 0
    /// `--record-dir`: what a recorded session keeps of each direction
    /// (`SessionRecordTap`); 0: off, nothing recorded or allocated.
    public var recordBytes = 0

    /// A mirror's queued bytes go out in one gathered send once this many
    /// wait, or once the oldest has waited `mirrorBatchDelayUs`. 0: no
    /// batching, one send per receive as it arrives.
    public var mirrorBatchBytes: Int
    /// 0: gather only what queued behind the send in flight, never wait.
    public var mirrorBatchDelayUs: Int
    /// The client's first turns that a mirror must answer before it gets
    /// the next (see `Session`, "Turns"); 0: none.
    public var mirrorTurns: Int
    /// A mirror that has not answered a turn in this long gets the next
    /// anyway, and is not waited for again in the session.
    public var mirrorTurnTimeoutUs: Int

    /// Every default is `Defaults`' but two, said here: `idleTimeoutMs` is 0
    /// (none) unless given, a session alone has no idle timeout (the proxy's
    /// comes from `Config`); and the mirror batch and the kept turns have no
    /// default at all (`Defaults` has 64 KiB and 4, a session under test
    /// mostly wants none): each caller says which it runs with.
    public init(mirrorCount: Int, mainConnectTimeoutMs: Int = Defaults.mainConnectTimeoutMs,
                mirrorConnectTimeoutMs: Int = Defaults.mirrorConnectTimeoutMs,
                backlogBytesMax: Int = Defaults.backlogBytesMax, backlogChunksMax: Int = Defaults.backlogChunksMax,
                readAheadChunks: Int = Config.readAheadChunks, mirrorLingerMs: Int = Defaults.mirrorLingerMs,
                idleTimeoutMs: Int = 0, mirrorFailuresBeforeBackoff: Int = Defaults.mirrorFailuresBeforeBackoff,
                mirrorBackoffInitialMs: Int = Defaults.mirrorBackoffInitialMs,
                mirrorBackoffMaxMs: Int = Defaults.mirrorBackoffMaxMs,
                sendProxy: ProxyProtocol.Version? = nil, acceptProxy: Bool = false,
                proxyHeaderTimeoutMs: Int = Defaults.proxyHeaderTimeoutMs,
                mirrorBatchBytes: Int, mirrorBatchDelayUs: Int, mirrorTurns: Int,
                mirrorTurnTimeoutUs: Int = Defaults.mirrorTurnTimeoutUs) {
        self.sendProxy = sendProxy
        self.acceptProxy = acceptProxy
        self.proxyHeaderTimeoutMs = proxyHeaderTimeoutMs
        self.mirrorCount = mirrorCount
        self.mainConnectTimeoutMs = mainConnectTimeoutMs
        self.mirrorConnectTimeoutMs = mirrorConnectTimeoutMs
        self.backlogBytesMax = backlogBytesMax
        self.backlogChunksMax = backlogChunksMax
        self.readAheadChunks = readAheadChunks
        self.mirrorLingerMs = mirrorLingerMs
        self.idleTimeoutMs = idleTimeoutMs
        self.mirrorFailuresBeforeBackoff = mirrorFailuresBeforeBackoff
        self.mirrorBackoffInitialMs = mirrorBackoffInitialMs
        self.mirrorBackoffMaxMs = mirrorBackoffMaxMs
        self.mirrorBatchBytes = mirrorBatchBytes
        self.mirrorBatchDelayUs = mirrorBatchDelayUs
        self.mirrorTurns = mirrorTurns
        self.mirrorTurnTimeoutUs = mirrorTurnTimeoutUs
    }
}

/// What all sessions of one worker share: the limits, the pool, the clock,
/// the counters, the health of each mirror, and the accounting that keeps
/// mirrors from taking the slots main's path needs.
public final class SessionContext {
    /// What the sessions' storage was sized for (every mirror slot); a
    /// session follows `sessionLimits`, taken at its start.
    public let limits: SessionLimits
    /// The current configuration generation's limits: what a session that
    /// starts now follows (`ConfigGeneration`; the worker adopts a new one
    /// between rounds).
    private var _sessionLimits: SessionLimits
    var sessionLimits: SessionLimits { _sessionLimits }
    public let pool: BufferPool
    public let stats: WorkerStats
    // Private storage behind the public reads: the sessions' hot paths read
    // them (docs/contributing.md, "Private storage, public reads").
    private var _nowMs: UInt64 = 0
    private var _nowUs: UInt64 = 0
    private var _sessionsEnding = 0
    private var _sessionsAwaitingProxyHeader = 0
    private var _mirrorOnlySlots = 0

    /// Milliseconds on a monotonic clock; the owner advances it.
    public var nowMs: UInt64 {
        get { _nowMs }
        set { _nowMs = newValue }
    }
    /// Microseconds on a monotonic clock (the mirror batch delay's), advanced by the owner too.
    public var nowUs: UInt64 {
        get { _nowUs }
        set { _nowUs = newValue }
    }
    /// Sessions whose client side is over but whose mirrors still flush:
    /// the only ones a tick has work for.
    public internal(set) var sessionsEnding: Int {
        get { _sessionsEnding }
        set { _sessionsEnding = newValue }
    }
    /// Sessions still waiting for their client's PROXY protocol header: the
    /// worker checks their deadline while there are any.
    public internal(set) var sessionsAwaitingProxyHeader: Int {
        get { _sessionsAwaitingProxyHeader }
        set { _sessionsAwaitingProxyHeader = newValue }
    }

    /// Slots that main has finished with but a mirror backlog still holds.
    public var mirrorOnlySlots: Int { _mirrorOnlySlots }
    /// At most this many: half the pool, so main's path always has the rest.
    public let mirrorOnlySlotsMax: Int
    private let mirrorOnly: UnsafeMutablePointer<Bool>

    /// Each mirror's back-off, shared with the other workers.
    public let mirrorHealth: MirrorHealth

    /// Main's connect failures and refused PROXY headers, for the log;
    /// shared with the other workers.
    public let problems: ProblemLog

    /// `--dump-dir`: where sessions hand the pairs to dump; nil: none.
    public var dumpSink: DumpSink?
    /// `--record-dir`: where sessions hand their recordings, and which are drawn; nil: none.
    public var recordSink: RecordSink?
    public var recordSampling = RecordSampling(percent: 100)

    /// The draws that choose which sessions a sampled mirror gets (SplitMix64).
    private var samplingState: UInt64

    /// - Parameter samplingSeed: fixes the sampling draws (tests); nil: a random seed.
    public init(limits: SessionLimits, pool: BufferPool, stats: WorkerStats, mirrorHealth: MirrorHealth? = nil,
                problems: ProblemLog? = nil, samplingSeed: UInt64? = nil) {
        self.limits = limits
        _sessionLimits = limits
        self.problems = problems ?? ProblemLog()
        samplingState = samplingSeed ?? UInt64.random(in: 0...UInt64.max)
        self.mirrorHealth = mirrorHealth ?? MirrorHealth(limits)
        self.pool = pool
        self.stats = stats
        mirrorOnlySlotsMax = max(1, pool.slotCount / 2)
        mirrorOnly = .allocate(capacity: pool.slotCount)
        mirrorOnly.initialize(repeating: false, count: pool.slotCount)
    }

    deinit { mirrorOnly.deallocate() }

    /// Main let go of `slot` while mirrors still hold it. Returns false when
    /// mirrors now hold more than their share of the pool.
    @inline(__always)
    func markMirrorOnly(_ slot: UInt32) -> Bool {
        mirrorOnly[Int(slot)] = true
        _mirrorOnlySlots &+= 1
        return _mirrorOnlySlots <= mirrorOnlySlotsMax
    }

    /// `slot` went back to the pool.
    @inline(__always)
    func slotFreed(_ slot: UInt32) {
        if mirrorOnly[Int(slot)] {
            mirrorOnly[Int(slot)] = false
            _mirrorOnlySlots &-= 1
        }
    }

    // MARK: Sampling (`-m ADDR@P%`)

    /// Whether this session goes to mirror `index`: a fresh draw per session
    /// and sampled mirror, so each mirror's share is independent of the others'.
    func mirrorIsSampled(_ index: Int, _ limits: SessionLimits) -> Bool {
        guard index < limits.mirrorSampleThresholds.count else { return true }
        let threshold = limits.mirrorSampleThresholds[index]
        guard threshold < MirrorSampling.everySession else { return true }
        samplingState &+= 0x9E37_79B9_7F4A_7C15
        var z = samplingState
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (z >> 32) < threshold
    }

    /// A new configuration generation: sessions that start from now on follow
    /// `limits` (its mirror count at most the slots the storage has).
    public func adopt(_ limits: SessionLimits) {
        precondition(limits.mirrorCount <= self.limits.mirrorCount, "a configuration with more mirror slots than the storage")
        _sessionLimits = limits
    }

    // MARK: Mirror back-off (the shared state, at this worker's clock)

    /// Whether new sessions should try mirror `index` now.
    public func mirrorIsTried(_ index: Int) -> Bool { mirrorHealth.isTried(index, nowMs: nowMs) }

    public func mirrorIsBackingOff(_ index: Int) -> Bool { !mirrorHealth.isTried(index, nowMs: nowMs) }

    /// Failed enough times in a row to be backed off (resting or being probed).
    public func mirrorIsFailing(_ index: Int) -> Bool { mirrorHealth.isFailing(index) }

    func mirrorConnected(_ index: Int) { mirrorHealth.connected(index) }

    /// A session's copy to mirror `index` finished: counted as retired when
    /// the configuration new sessions follow no longer has that mirror.
    func mirrorLegClosed(_ index: Int) {
        if index >= _sessionLimits.mirrorCount || _sessionLimits.mirrorSlotsAbsent & (1 << UInt64(index)) != 0 {
            stats.mirrors[index].sessionsRetired.bump()
        }
    }

    func mirrorConnectFailed(_ index: Int, errno: Int32) {
        mirrorHealth.connectFailed(index, errno: errno, nowMs: nowMs)
    }
}
