import Platform

/// The clock of one LoadClient run, whichever loop drives it (epoll or
/// io_uring): when it started and must end, the CPU time it took, and the
/// progress reported once a second.
struct LoadRunClock {
    static let tickNanos: UInt64 = 1_000_000_000

    let cpuStartNanos: UInt64
    let startNanos: UInt64
    let deadlineNanos: UInt64
    private var tickNanos: UInt64
    private var lastTickNanos: UInt64
    private var lastTickRequests: UInt64 = 0

    init(durationNanos: UInt64) {
        cpuStartNanos = MonotonicClock.threadCPUNanos()
        startNanos = MonotonicClock.nowNanos()
        deadlineNanos = startNanos &+ durationNanos
        tickNanos = startNanos + Self.tickNanos
        lastTickNanos = startNanos
    }

    /// One turn of the loop at `nowNanos`: reports the last second's progress
    /// when one has passed. Returns how long the loop may wait before its
    /// next report or its end; nil: the run's time is up.
    mutating func turn(nowNanos: UInt64, tally: LoadClientTally, onSecond: (LoadProgress) -> Void) -> UInt64? {
        if nowNanos >= tickNanos {
            onSecond(tally.progress(elapsedNanos: nowNanos - startNanos, intervalNanos: nowNanos - lastTickNanos,
                                    intervalRequests: tally.requests - lastTickRequests))
            lastTickNanos = nowNanos
            lastTickRequests = tally.requests
            while tickNanos <= nowNanos { tickNanos += Self.tickNanos }
        }
        if nowNanos >= deadlineNanos { return nil }
        return min(tickNanos, deadlineNanos) - nowNanos
    }

    /// At the run's end, before its connections close (not the run's work):
    /// the wall-clock and CPU nanoseconds it took.
    func finish() -> (elapsedNanos: UInt64, cpuNanos: UInt64) {
        let nowNanos = MonotonicClock.nowNanos()
        return (nowNanos - startNanos, MonotonicClock.threadCPUNanos() - cpuStartNanos)
    }
}
