import Glibc

/// The signals the proxy acts on are blocked in every thread and taken
/// synchronously by the main thread with `sigtimedwait`, so no handler runs
/// at a random point and worker threads never see them:
/// - SIGINT, SIGTERM: the first drains, a second closes every session at once;
/// - SIGUSR1: log the stats line now;
/// - SIGHUP: logged and ignored (the configuration is the command line, there
///   is nothing to reload); by default it would kill the proxy when the
///   terminal it was started from goes away.
/// SIGPIPE is ignored: a send to a reset peer already uses MSG_NOSIGNAL, but a
/// log line written to a stderr whose reader is gone (a dead log shipper,
/// `| head`) would otherwise kill the process, drain and all.
enum Signals {
    enum Action: Equatable {
        case stop(Int32)
        case logStats
        case reload
    }

    /// Call before any thread starts: threads inherit the mask.
    static func block() {
        var set = handledSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Writes to a pipe or socket with no reader fail with EPIPE instead.
    /// Process-wide; call first thing.
    static func ignoreBrokenPipe() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// The signal that arrived within `timeoutMs`, or nil.
    static func wait(timeoutMs: Int) -> Action? {
        var set = handledSet()
        var timeout = timespec(tv_sec: timeoutMs / 1000, tv_nsec: (timeoutMs % 1000) * 1_000_000)
        switch sigtimedwait(&set, nil, &timeout) {
        case SIGINT: return .stop(SIGINT)
        case SIGTERM: return .stop(SIGTERM)
        case SIGUSR1: return .logStats
        case SIGHUP: return .reload
        default: return nil
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

    private static func handledSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGINT, SIGTERM, SIGUSR1, SIGHUP] { sigaddset(&set, signal) }
        return set
    }
}
