import Glibc

/// Clock readings straight from clock_gettime (a vDSO call, no syscall).
public enum MonotonicClock {
    public static func nowNanos() -> UInt64 {
        read(CLOCK_MONOTONIC)
    }

    public static func nowMs() -> UInt64 {
        nowNanos() / 1_000_000
    }

    public static func nowMicros() -> UInt64 {
        nowNanos() / 1_000
    }

    public static func nowSeconds() -> Double {
        Double(nowNanos()) / 1e9
    }

    /// Milliseconds at the resolution of the scheduler tick (a few ms), for
    /// timers that need no better: cheaper than `nowMs` on every completion batch.
    public static func coarseMs() -> UInt64 {
        read(CLOCK_MONOTONIC_COARSE) / 1_000_000
    }

    /// CPU time (user and system) consumed by the calling thread.
    public static func threadCPUNanos() -> UInt64 {
        read(CLOCK_THREAD_CPUTIME_ID)
    }

    private static func read(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
