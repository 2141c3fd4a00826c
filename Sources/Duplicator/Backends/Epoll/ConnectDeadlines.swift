/// The epoll backend's connect timeouts (io_uring's are linked timeouts,
/// kept by the kernel): a `DeadlineQueue` per duration asked for (main's and
/// the mirrors'), each in order since its deadlines are now plus the same
/// duration. An entry whose connect has ended is skipped when due (its
/// serial tells it from a later connect of the same descriptor).
struct ConnectDeadlines {
    struct Connect: BitwiseCopyable {
        var fd: Int32
        var serial: UInt32
    }

    private var durationsMs: [Int] = []
    private var queues: [DeadlineQueue<Connect>] = []

    var isEmpty: Bool {
        for queue in queues where !queue.isEmpty { return false }
        return true
    }

    mutating func add(fd: Int32, serial: UInt32, deadlineMs: UInt64, timeoutMs: Int) {
        let queue: DeadlineQueue<Connect>
        if let known = durationsMs.firstIndex(of: timeoutMs) {
            queue = queues[known]
        } else {
            // Grows to the connects pending at once within one duration, and stays.
            queue = DeadlineQueue(capacity: 64, grows: true)
            durationsMs.append(timeoutMs)
            queues.append(queue)
        }
        queue.append(Connect(fd: fd, serial: serial), deadline: deadlineMs)
    }

    /// Entries held, due or not.
    var storedCount: Int { queues.reduce(0) { $0 + $1.count } }

    var nextDeadlineMs: UInt64? {
        var next: UInt64?
        for queue in queues {
            if let deadline = queue.firstDeadline { next = min(next ?? deadline, deadline) }
        }
        return next
    }

    /// The earliest entry whose deadline is not after `nowMs`.
    func popDue(nowMs: UInt64) -> (fd: Int32, serial: UInt32)? {
        var earliest: DeadlineQueue<Connect>?
        var earliestDeadline = UInt64.max
        for queue in queues {
            if let deadline = queue.firstDeadline, deadline <= nowMs, deadline < earliestDeadline {
                earliest = queue
                earliestDeadline = deadline
            }
        }
        guard let connect = earliest?.popDue(now: nowMs) else { return nil }
        return (connect.fd, connect.serial)
    }
}
