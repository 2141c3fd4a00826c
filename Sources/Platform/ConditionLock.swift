import Glibc

/// A mutex and its condition variable, for a thread that waits for work and
/// the threads that hand it over (`BackgroundWriter`, the TLS handshake
/// thread). The stdlib's `Mutex` has no condition to wait on.
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Holding the lock: wakes the waiting thread.
    public func signal() { pthread_cond_signal(condition) }

    /// Holding the lock: releases it until `signal`, then holds it again.
    public func wait() { pthread_cond_wait(condition, mutex) }

    /// Runs `body` holding the lock.
    public func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
