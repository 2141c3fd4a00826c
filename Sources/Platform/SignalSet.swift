import Glibc

/// Signals taken synchronously: blocked in every thread (threads inherit the
/// mask, so block them before starting any) and waited for with
/// sigtimedwait, so that no handler runs at a random point.
public struct SignalSet: Sendable {
    private let signals: [Int32]

    public init(_ signals: [Int32]) { self.signals = signals }

    /// Blocks these signals in the calling thread and the threads it starts from now on.
    public func block() {
        var set = sigset()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// The signal that arrived within `timeoutNanos`, or nil.
    public func wait(timeoutNanos: UInt64) -> Int32? {
        var set = sigset()
        var timeout = timespec(tv_sec: Int(timeoutNanos / 1_000_000_000), tv_nsec: Int(timeoutNanos % 1_000_000_000))
        while true {
            let signal = sigtimedwait(&set, nil, &timeout)
            if signal > 0 { return signal }
            if errno != EINTR { return nil }
        }
    }

    /// Waits for as long as it takes.
    public func wait() -> Int32 {
        var set = sigset()
        var signal: Int32 = 0
        while sigwait(&set, &signal) != 0 {}
        return signal
    }

    private func sigset() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }
}
