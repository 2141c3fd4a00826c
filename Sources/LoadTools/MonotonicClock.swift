import Glibc

/// Clock readings in nanoseconds, straight from clock_gettime (a vDSO call, no syscall).
enum MonotonicClock {
    static func nowNanos() -> UInt64 {
        read(CLOCK_MONOTONIC)
    }

    /// CPU time (user and system) consumed by the calling thread.
    static func threadCPUNanos() -> UInt64 {
        read(CLOCK_THREAD_CPUTIME_ID)
    }

    private static func read(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
