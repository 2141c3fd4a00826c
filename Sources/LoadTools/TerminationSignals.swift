import Glibc
import Platform

/// SIGINT and SIGTERM taken synchronously (sigtimedwait), for the command-line tools:
/// no async-signal-safety concerns, and a clean stop with joined threads and closed
/// descriptors instead of a kill mid-write.
public enum TerminationSignals {
    private static let set = SignalSet([SIGINT, SIGTERM])

    /// Blocks SIGINT and SIGTERM in the calling thread and in the threads it starts from
    /// now on. Call it first thing in main, before starting any thread.
    public static func block() { set.block() }

    /// Waits up to `timeoutNanos` for SIGINT or SIGTERM (blocked with `block()`).
    /// Returns the signal, or nil when the time ran out.
    public static func wait(timeoutNanos: UInt64) -> Int32? { set.wait(timeoutNanos: timeoutNanos) }

    /// Starts a thread that calls `handler` with each SIGINT or SIGTERM (blocked with
    /// `block()`), for as long as the process runs.
    public static func startWatching(_ handler: @escaping @Sendable (Int32) -> Void) throws {
        try NativeThread.start(name: "signals") {
            while true { handler(set.wait()) }
        }.detach()
    }
}
