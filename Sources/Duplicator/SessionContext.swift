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
    /// How long mirrors may go on flushing and draining after the client's
    /// session ended, before they are closed.
    public var mirrorLingerMs: Int
    /// A session in which nothing moved between client and main for this long ends; 0: never.
    public var idleTimeoutMs: Int
    /// Consecutive connect failures after which a mirror is not tried for a while.
    public var mirrorFailuresBeforeBackoff: Int
    public var mirrorBackoffInitialMs: Int
    public var mirrorBackoffMaxMs: Int
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

    public init(mirrorCount: Int, mainConnectTimeoutMs: Int = 10_000, mirrorConnectTimeoutMs: Int = 500,
                backlogBytesMax: Int = 4 << 20, backlogChunksMax: Int = 256, readAheadChunks: Int = 2,
                mirrorLingerMs: Int = 2_000, idleTimeoutMs: Int = 0, mirrorFailuresBeforeBackoff: Int = 3,
                mirrorBackoffInitialMs: Int = 250, mirrorBackoffMaxMs: Int = 30_000,
                mirrorBatchBytes: Int = 0, mirrorBatchDelayUs: Int = 0, mirrorTurns: Int = 0,
                mirrorTurnTimeoutUs: Int = 100_000) {
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
    public let limits: SessionLimits
    public let pool: BufferPool
    public let stats: WorkerStats
    /// Milliseconds on a monotonic clock; the owner advances it.
    public var nowMs: UInt64 = 0
    /// Microseconds on a monotonic clock (the mirror batch delay's), advanced by the owner too.
    public var nowUs: UInt64 = 0
    /// Sessions whose client side is over but whose mirrors still flush:
    /// the only ones a tick has work for.
    public internal(set) var sessionsEnding = 0

    /// Slots that main has finished with but a mirror backlog still holds.
    public private(set) var mirrorOnlySlots = 0
    /// At most this many: half the pool, so main's path always has the rest.
    public let mirrorOnlySlotsMax: Int
    private let mirrorOnly: UnsafeMutablePointer<Bool>

    private var mirrorFailures: [Int]
    private var mirrorSkipUntilMs: [UInt64]
    /// The errno of each mirror's latest connect failure, for the log.
    public private(set) var mirrorLastConnectErrno: [Int32]

    public init(limits: SessionLimits, pool: BufferPool, stats: WorkerStats) {
        self.limits = limits
        self.pool = pool
        self.stats = stats
        mirrorOnlySlotsMax = max(1, pool.slotCount / 2)
        mirrorOnly = .allocate(capacity: pool.slotCount)
        mirrorOnly.initialize(repeating: false, count: pool.slotCount)
        mirrorFailures = Array(repeating: 0, count: limits.mirrorCount)
        mirrorSkipUntilMs = Array(repeating: 0, count: limits.mirrorCount)
        mirrorLastConnectErrno = Array(repeating: 0, count: limits.mirrorCount)
    }

    deinit { mirrorOnly.deallocate() }

    /// Main let go of `slot` while mirrors still hold it. Returns false when
    /// mirrors now hold more than their share of the pool.
    @inline(__always)
    func markMirrorOnly(_ slot: UInt32) -> Bool {
        mirrorOnly[Int(slot)] = true
        mirrorOnlySlots &+= 1
        return mirrorOnlySlots <= mirrorOnlySlotsMax
    }

    /// `slot` went back to the pool.
    @inline(__always)
    func slotFreed(_ slot: UInt32) {
        if mirrorOnly[Int(slot)] {
            mirrorOnly[Int(slot)] = false
            mirrorOnlySlots &-= 1
        }
    }

    // MARK: Mirror back-off

    /// Whether new sessions should try mirror `index` now.
    public func mirrorIsTried(_ index: Int) -> Bool { nowMs >= mirrorSkipUntilMs[index] }

    public func mirrorIsBackingOff(_ index: Int) -> Bool { nowMs < mirrorSkipUntilMs[index] }

    /// Failed enough times in a row to be backed off (resting or being probed).
    public func mirrorIsFailing(_ index: Int) -> Bool {
        mirrorFailures[index] >= limits.mirrorFailuresBeforeBackoff
    }

    func mirrorConnected(_ index: Int) {
        mirrorFailures[index] = 0
        mirrorSkipUntilMs[index] = 0
    }

    /// After `mirrorFailuresBeforeBackoff` failures in a row the mirror rests
    /// for an exponentially growing, capped time; the first session after
    /// that probes it again.
    func mirrorConnectFailed(_ index: Int, errno: Int32) {
        mirrorLastConnectErrno[index] = errno
        mirrorFailures[index] += 1
        let beyond = mirrorFailures[index] - limits.mirrorFailuresBeforeBackoff
        guard beyond >= 0 else { return }
        let shift = min(beyond, 20)
        let restMs = min(limits.mirrorBackoffInitialMs << shift, limits.mirrorBackoffMaxMs)
        mirrorSkipUntilMs[index] = nowMs + UInt64(restMs)
    }
}
