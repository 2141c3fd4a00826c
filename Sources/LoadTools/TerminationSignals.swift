import Glibc

/// SIGINT and SIGTERM taken synchronously (sigtimedwait), for the command-line tools:
/// no async-signal-safety concerns, and a clean stop with joined threads and closed
/// descriptors instead of a kill mid-write.
public enum TerminationSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread and in the threads it starts from
    /// now on. Call it first thing in main, before starting any thread.
    public static func block() {
        var signals = terminationSet()
        pthread_sigmask(SIG_BLOCK, &signals, nil)
    }

    /// Waits up to `timeoutNanos` for SIGINT or SIGTERM (blocked with `block()`).
    /// Returns the signal, or nil when the time ran out.
    public static func wait(timeoutNanos: UInt64) -> Int32? {
        var signals = terminationSet()
        var timeout = timespec(tv_sec: Int(timeoutNanos / 1_000_000_000), tv_nsec: Int(timeoutNanos % 1_000_000_000))
        while true {
            let signal = sigtimedwait(&signals, nil, &timeout)
            if signal > 0 { return signal }
            if errno != EINTR { return nil }
        }
    }

    /// Starts a thread that calls `handler` with each SIGINT or SIGTERM (blocked with
    /// `block()`), for as long as the process runs.
    public static func startWatching(_ handler: @escaping @Sendable (Int32) -> Void) throws {
        try NativeThread.start(name: "signals") {
            var signals = terminationSet()
            while true {
                var signal: Int32 = 0
                if sigwait(&signals, &signal) == 0 { handler(signal) }
            }
        }.detach()
    }

    private static func terminationSet() -> sigset_t {
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        return signals
    }
}
