import Glibc
import Platform

/// The thread and queue behind `DumpWriter` and `RecordWriter`, written
/// once: workers offer requests without waiting (the lock is held only to
/// append), the queue is bounded in the bytes its requests hold, and one
/// thread writes them to disk in order, so that a slow disk never slows a
/// worker. What a request becomes, which bounds apply besides the queue's,
/// and what is counted stay with each writer.
final class BackgroundWriter<Request: Sendable>: @unchecked Sendable {
    private let lock = ConditionLock()
    private var queue: [(request: Request, bytes: Int)] = []
    /// Bytes held by the queued requests and the one being written.
    private var queuedBytes = 0
    private var stopping = false
    private var thread: NativeThread?

    /// Starts the thread `name`, which hands each request to `write` in order.
    func start(_ name: String, write: @escaping @Sendable (Request) -> Void) throws(ProxyError) {
        thread = try startThread(name) { [self] in run(write) }
    }

    /// Writes what is queued, then ends the thread.
    func stop() {
        lock.withLock {
            stopping = true
            lock.signal()
        }
        thread?.join()
        thread = nil
    }

    /// On a worker thread: queues `request`, which holds `bytes`, unless the
    /// queue would pass `queueBytesMax` or the writer is stopping (false:
    /// the caller counts the drop). One request is always taken when the
    /// queue is empty, whatever its size.
    func offer(_ request: Request, bytes: Int, queueBytesMax: Int) -> Bool {
        lock.withLock {
            let accepted = (queue.isEmpty || queuedBytes + bytes <= queueBytesMax) && !stopping
            if accepted {
                queue.append((request, bytes))
                queuedBytes += bytes
                lock.signal()
            }
            return accepted
        }
    }

    private func run(_ write: (Request) -> Void) {
        while true {
            lock.lock()
            while queue.isEmpty && !stopping { lock.wait() }
            if queue.isEmpty {
                lock.unlock()
                return
            }
            let next = queue.removeFirst()
            lock.unlock()
            write(next.request)
            // The request's memory is held until it is written.
            lock.withLock { queuedBytes -= next.bytes }
        }
    }

    /// Throws unless `directory` is a directory this process may write into
    /// (`flag` names the option in the error).
    static func checkDirectory(_ directory: String, flag: String) throws(ConfigError) {
        var status = stat()
        guard stat(directory, &status) == 0 else {
            throw ConfigError("\(flag) \(directory): \(String(cString: strerror(errno)))")
        }
        guard status.st_mode & S_IFMT == S_IFDIR else { throw ConfigError("\(flag) \(directory): not a directory") }
        guard access(directory, W_OK | X_OK) == 0 else {
            throw ConfigError("\(flag) \(directory): not writable: \(String(cString: strerror(errno)))")
        }
    }

    /// The wall clock minus the session clock, in microseconds: what turns
    /// the times the proxy saw bytes at into a capture's timestamps.
    static func wallClockOffsetUs() -> UInt64 {
        var realtime = timespec()
        clock_gettime(CLOCK_REALTIME, &realtime)
        let wallUs = UInt64(realtime.tv_sec) * 1_000_000 + UInt64(realtime.tv_nsec) / 1_000
        return wallUs &- MonotonicClock.nowMicros()
    }

    /// Creates `path` (mode 0600: production data; O_EXCL: never over
    /// another file) holding `bytes`. Returns 0, or the errno of what
    /// failed; a file that could not be written whole is removed.
    static func writeNewFile(path: String, bytes: [UInt8]) -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return errno }
        var written = 0
        var failure: Int32 = 0
        bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let result = Glibc.write(fd, raw.baseAddress! + written, raw.count - written)
                if result < 0 && errno == EINTR { continue }
                if result <= 0 {
                    failure = result < 0 ? errno : ENOSPC  // a write that takes nothing: the disk is full
                    return
                }
                written += result
            }
        }
        if close(fd) != 0 && failure == 0 { failure = errno }
        if failure != 0 { unlink(path) }
        return failure
    }
}
