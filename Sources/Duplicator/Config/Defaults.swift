/// Each default an operator can change, written once. `Config` starts from
/// these, the command line shows them in `--help` (as text made from these
/// values by `SizeParser.text` and `DurationParser.text`), and the sans-IO
/// `SessionLimits` takes the session's share of them.
public enum Defaults {
    /// `--backend`: io_uring where it can be used, else epoll.
    public static let backend = Config.Backend.auto
    /// `-t`, goduplicator's mirror connect timeout.
    public static let mirrorConnectTimeoutMs = 500
    public static let mainConnectTimeoutMs = 10_000
    public static let backlogBytesMax = 4 << 20
    public static let backlogChunksMax = 256
    public static let slotSize = 16 << 10
    public static let maxMemoryBytes = 1 << 30
    public static let sessionsMax = 16384
    /// nginx's `proxy_timeout` is 10 minutes too.
    public static let idleTimeoutMs = 600_000
    public static let mirrorLingerMs = 2_000
    public static let drainTimeoutMs = 5_000
    public static let mirrorDiscardBatchBytes = 64 << 10
    /// `--compare-window`: what each (session, mirror) may keep of the reply
    /// stream that runs ahead of the other.
    public static let compareWindowBytes = 64 << 10
    /// `--dump-bytes`: what a pcapng dump keeps of each direction of a session.
    public static let dumpBytes = 1 << 20
    /// `--record-bytes`: what a recorded session keeps of each direction.
    public static let recordBytes = 1 << 20
    /// `--record-max-bytes`: what recording may write into its directory.
    public static let recordMaxBytes = 1 << 30
    /// `--dump-max-files`: pcapng dumps written at most, per run.
    public static let dumpMaxFiles = 1000
    /// `--dump-queue`: bytes of dumps waiting for the disk at most; a
    /// dump beyond is dropped (counted and logged). 64 MiB takes a burst of
    /// thousands of small dumps, or 21 of the largest at the default
    /// `--dump-bytes` (three streams of 1 MiB).
    public static let dumpQueueBytes = 64 << 20
    /// A mirror's queued bytes go out in one gathered send once this many
    /// wait, or once the oldest has waited the delay (BENCHMARKS.md).
    public static let mirrorBatchBytes = 64 << 10
    public static let mirrorBatchDelayUs = 1_000
    /// The client's first turns a mirror must answer before it gets the next.
    public static let mirrorTurns = 4
    public static let mirrorTurnTimeoutUs = 100_000
    public static let waitBatch = 1
    /// `--accept-gathering`: off, because a client stays on the worker it
    /// landed on: gathered, a pool of persistent connections opened while the
    /// proxy is idle would stay on one core however busy it gets. `auto` saves
    /// CPU per request below saturation for clients that come and go
    /// (docs/gathering.md, BENCHMARKS.md).
    public static let acceptGathering = AcceptGatheringMode.off
    public static let waitBatchTimeoutUs = 50
    /// Balancers send the PROXY protocol header with the connection's first
    /// segment: a few seconds is ample, and short enough that idle probes
    /// do not pile up.
    public static let proxyHeaderTimeoutMs = 3_000
    /// `--tls-handshake-timeout`: nginx's `ssl_handshake_timeout` is 60s;
    /// a client that has not finished its handshake in 10s on a proxy
    /// in front of a service is a scan or a stall, and holds a session's place.
    public static let tlsHandshakeTimeoutMs = 10_000
    /// `--zerocopy`: zero-copy sends where they can pay (BENCHMARKS.md, "Zero copy").
    public static let zeroCopy = ZeroCopyMode.auto
    /// With `--zerocopy auto`, the smallest send made zero-copy: below about
    /// 10 KB pinning and the notification cost more than the copy they save
    /// (the kernel's msg_zerocopy.rst); not measurable here (no NIC).
    public static let zeroCopyBytesMin = 16 << 10
    public static let mirrorFailuresBeforeBackoff = 3
    public static let mirrorBackoffInitialMs = 250
    public static let mirrorBackoffMaxMs = 30_000
}
