/// Values the proxy cannot honour, refused at start with the smallest (or
/// largest) one it can, instead of being taken and silently rounded: the
/// workers look at deadlines once per tick (`WorkerCore.tickMs`, 100 ms),
/// so a timeout shorter than that would fire up to a tick late and mean
/// something else than what was written.
extension Config {
    /// The shortest timeout the workers keep: one tick.
    public static let timeoutMsMin = 100
    /// The shortest `--stats-interval`: one line a second is already more
    /// than a person reads; below it the line is noise (1ns gave 10 lines a second).
    public static let statsIntervalMsMin = 1_000
    /// `--dump-queue`'s range: at least one dump of the largest `--dump-bytes`
    /// fits at once whatever the bound (an empty queue always takes one).
    public static let dumpQueueBytesRange = (1 << 20)...(16 << 30)

    func validateOperatorLimits() throws(ConfigError) {
        // -t 0 used to mean "no timeout of ours": a black-holed mirror then
        // waited for the kernel's own (about two minutes of SYN retries)
        // before its failure counted toward its back-off, so new sessions
        // kept connecting to it meanwhile. Refused: a timeout is what makes
        // the back-off work.
        if mirrorConnectTimeoutMs == 0 {
            throw ConfigError("-t 0: a mirror connect timeout is needed (a black-holed mirror would wait minutes for the kernel's "
                + "before it is backed off); the smallest is \(DurationParser.text(milliseconds: Self.timeoutMsMin))")
        }
        let timeouts: [(flag: String, ms: Int, zeroAllowed: Bool)] = [
            ("-t", mirrorConnectTimeoutMs, false),
            ("--main-connect-timeout", mainConnectTimeoutMs, true),
            ("--idle-timeout", idleTimeoutMs, true),
            ("--mirror-linger", mirrorLingerMs, true),
            ("--drain-timeout", drainTimeoutMs, true),
            ("--proxy-header-timeout", proxyHeaderTimeoutMs, false),
        ]
        for timeout in timeouts where (timeout.ms > 0 || !timeout.zeroAllowed) && timeout.ms < Self.timeoutMsMin {
            throw ConfigError("\(timeout.flag) \(DurationParser.text(milliseconds: timeout.ms)): shorter than the workers' tick; "
                + "the smallest is \(DurationParser.text(milliseconds: Self.timeoutMsMin))"
                + (timeout.zeroAllowed ? " (or 0)" : ""))
        }
        guard Self.dumpQueueBytesRange.contains(dumpQueueBytes) else {
            throw ConfigError("--dump-queue must be from \(SizeParser.text(Self.dumpQueueBytesRange.lowerBound)) "
                + "to \(SizeParser.text(Self.dumpQueueBytesRange.upperBound)), got \(dumpQueueBytes) bytes")
        }
    }

    /// `--stats-interval`: 0 (never) or at least a second.
    public static func checkStatsInterval(milliseconds: Int) throws(ConfigError) {
        guard milliseconds == 0 || milliseconds >= statsIntervalMsMin else {
            throw ConfigError("--stats-interval \(DurationParser.text(milliseconds: milliseconds)): too often; "
                + "the smallest is \(DurationParser.text(milliseconds: statsIntervalMsMin)) (or 0: never)")
        }
    }
}
