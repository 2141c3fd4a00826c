import Glibc

/// SIGINT and SIGTERM are blocked in every thread and taken synchronously
/// by the main thread with `sigtimedwait`, so no handler runs at a random
/// point and worker threads never see them.
enum Signals {
    static func blockTermination() {
        var set = terminationSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// The termination signal that arrived within `timeoutMs`, or nil.
    static func wait(timeoutMs: Int) -> Int32? {
        var set = terminationSet()
        var timeout = timespec(tv_sec: timeoutMs / 1000, tv_nsec: (timeoutMs % 1000) * 1_000_000)
        let signal = sigtimedwait(&set, nil, &timeout)
        return signal > 0 ? signal : nil
    }

    private static func terminationSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        return set
    }
}
