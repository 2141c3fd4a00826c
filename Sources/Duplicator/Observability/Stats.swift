import Synchronization

/// Counters of one worker. The worker thread is the only writer (a relaxed
/// load and store, no locked instruction on the data path); anyone may read
/// them at any time through the atomics.
public final class WorkerStats: Sendable {
    public let sessionsAccepted = Atomic<UInt64>(0)
    public let sessionsActive = Atomic<UInt64>(0)
    /// Clients closed at once because the worker had admitted all the
    /// sessions its memory can hold (or `--max-sessions`).
    public let sessionsRejected = Atomic<UInt64>(0)
    public let sessionsCompleted = Atomic<UInt64>(0)
    public let sessionsEndedByClientError = Atomic<UInt64>(0)
    public let sessionsEndedByMainConnectFailure = Atomic<UInt64>(0)
    public let sessionsEndedByMainError = Atomic<UInt64>(0)
    public let sessionsEndedByIdleTimeout = Atomic<UInt64>(0)
    public let sessionsAborted = Atomic<UInt64>(0)
    /// `--accept-proxy`: clients closed for a missing, malformed, oversized or late PROXY protocol header.
    public let sessionsEndedByBadProxyHeader = Atomic<UInt64>(0)
    /// `--tls-cert`: clients whose TLS handshake failed or timed out (nothing reached main or a mirror).
    public let sessionsEndedByTLSHandshake = Atomic<UInt64>(0)
    /// TLS handshakes in progress now (their clients hold a session's place).
    public let tlsHandshakesActive = Atomic<UInt64>(0)
    /// Established TLS streams that failed (a record that does not decrypt, a fatal alert).
    public let tlsErrors = Atomic<UInt64>(0)
    public let acceptErrors = Atomic<UInt64>(0)
    /// Connections refused because they were the proxy's own, looped back
    /// into its listener (`LoopGuard`): counted on either side of the loop.
    public let loopsRefused = Atomic<UInt64>(0)
    /// Completions whose tag names no operation this proxy submits: a bug,
    /// counted and logged once rather than dropped unseen.
    public let completionsUnknown = Atomic<UInt64>(0)
    public let bytesClientToMain = Atomic<UInt64>(0)
    public let bytesMainToClient = Atomic<UInt64>(0)
    public let poolSlotsInUse = Atomic<UInt64>(0)
    /// Slots of the pool's segments taken into use so far: its resident part.
    public let poolSlotsGrown = Atomic<UInt64>(0)
    /// Times a receive found no free slot and waited (back-pressure).
    public let poolExhausted = Atomic<UInt64>(0)
    /// `--zerocopy`: sends made zero-copy, and those whose notification
    /// said the kernel copied after all (every one towards this host).
    public let zeroCopySends = Atomic<UInt64>(0)
    public let zeroCopyCopied = Atomic<UInt64>(0)
    /// `--accept-gathering auto`: the worker's busy fraction over its last
    /// tick (its thread's CPU time over the tick), in thousandths.
    public let busyPermille = Atomic<UInt64>(0)
    public let mirrors: [MirrorStats]

    public init(mirrorCount: Int) {
        mirrors = (0..<mirrorCount).map { _ in MirrorStats() }
    }
}

/// Counters of one mirror, in one worker.
public final class MirrorStats: Sendable {
    /// Sessions this mirror was left out of by its sampling (`-m ADDR@P%`).
    public let sessionsSampledOut = Atomic<UInt64>(0)
    /// Sessions whose connect to this mirror succeeded.
    public let sessionsMirrored = Atomic<UInt64>(0)
    public let bytesSent = Atomic<UInt64>(0)
    /// Send completions that carried bytes to this mirror: with batching,
    /// far fewer than the client's receives.
    public let sends = Atomic<UInt64>(0)
    /// Sessions in which this mirror fell more than its backlog behind and was cut.
    public let sessionsCutForLag = Atomic<UInt64>(0)
    /// Sessions in which this mirror was cut because mirrors together held
    /// their share of the pool and it was the session's laggiest.
    public let sessionsCutForPoolShare = Atomic<UInt64>(0)
    /// Client bytes this mirror did not get: left in a cut backlog, or sent by
    /// the client after the cut.
    public let bytesMissed = Atomic<UInt64>(0)
    public let connectFailures = Atomic<UInt64>(0)
    public let connectTimeouts = Atomic<UInt64>(0)
    /// Resets and other errors on an established mirror connection.
    public let errors = Atomic<UInt64>(0)
    /// Sessions not mirrored because this mirror was backing off after failures.
    public let sessionsSkipped = Atomic<UInt64>(0)
    /// Bytes the mirror replied (discarded).
    public let replyBytes = Atomic<UInt64>(0)
    /// Discards that took replies: with `--mirror-discard-batch`, far fewer than replies.
    public let discards = Atomic<UInt64>(0)
    /// This mirror's copies in sessions that began before a reload removed
    /// it, counted as each finishes (flushed and closed, as at session end).
    public let sessionsRetired = Atomic<UInt64>(0)
    /// 1 while this worker rests this mirror after repeated connect failures.
    public let backingOff = Atomic<UInt64>(0)
    /// `--compare`: the verdicts on this mirror's replies.
    public let comparisons = ComparisonStats()

    public init() {}
}

extension Atomic where Value == UInt64 {
    /// Single-writer increment: a relaxed load and store, no locked RMW.
    @inline(__always)
    func bump(_ amount: Int = 1) {
        store(load(ordering: .relaxed) &+ UInt64(truncatingIfNeeded: amount), ordering: .relaxed)
    }

    @inline(__always)
    func drop(_ amount: Int = 1) {
        store(load(ordering: .relaxed) &- UInt64(truncatingIfNeeded: amount), ordering: .relaxed)
    }

    @inline(__always)
    public var value: UInt64 { load(ordering: .relaxed) }
}
