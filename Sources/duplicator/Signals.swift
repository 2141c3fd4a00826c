import Glibc
import Platform

/// The signals the proxy acts on are blocked in every thread and taken
/// synchronously by the main thread with `sigtimedwait`, so no handler runs
/// at a random point and worker threads never see them:
/// - SIGINT, SIGTERM: the first drains, a second closes every session at once;
/// - SIGUSR1: log the stats line now;
/// - SIGHUP: with `--config FILE`, reload it (`ConfigReloader`); without,
///   logged and ignored (by default it would kill the proxy when the
///   terminal it was started from goes away).
/// SIGPIPE is ignored: a send to a reset peer already uses MSG_NOSIGNAL, but a
/// log line written to a stderr whose reader is gone (a dead log shipper,
/// `| head`) would otherwise kill the process, drain and all.
enum Signals {
    enum Action: Equatable {
        case stop(Int32)
        case logStats
        case reload
    }

    private static let handled = SignalSet([SIGINT, SIGTERM, SIGUSR1, SIGHUP])

    /// Call before any thread starts: threads inherit the mask.
    static func block() { handled.block() }

    /// Writes to a pipe or socket with no reader fail with EPIPE instead.
    /// Process-wide; call first thing.
    static func ignoreBrokenPipe() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// The signal that arrived within `timeoutMs`, or nil.
    static func wait(timeoutMs: Int) -> Action? {
        switch handled.wait(timeoutNanos: UInt64(timeoutMs) * 1_000_000) {
        case SIGINT: .stop(SIGINT)
        case SIGTERM: .stop(SIGTERM)
        case SIGUSR1: .logStats
        case SIGHUP: .reload
        default: nil
        }
    }

    static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGUSR1: return "SIGUSR1"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(signal)"
        }
    }
}
