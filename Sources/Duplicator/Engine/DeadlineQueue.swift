/// Deadlines in the order they were asked for, each with what it is for:
/// the one queue of deadlines of a worker, behind its sessions' timers
/// (`SessionTimers`) and the epoll backend's connect timeouts
/// (`ConnectDeadlines`). Each queue holds deadlines of one delay ("now plus
/// the same delay"), so they come in order and the first is the earliest;
/// one asked behind a later deadline (its delay was counted from an earlier
/// clock reading) comes due with that one, a little late, never early.
/// Deadlines are in whatever unit the owner's clock counts.
///
/// A ring over fixed memory: no allocation after init, unless `grows` (then
/// it doubles when full, and keeps that size). A class over its own memory
/// rather than a struct of arrays held in a `var` (docs/contributing.md,
/// "Private storage, public reads").
final class DeadlineQueue<Payload: BitwiseCopyable> {
    private var payloads: UnsafeMutablePointer<Payload>
    private var deadlines: UnsafeMutablePointer<UInt64>
    private(set) var capacity: Int
    private let grows: Bool
    private var head = 0
    private(set) var count = 0

    /// - Parameter grows: whether a full queue doubles (else `append` refuses).
    init(capacity: Int, grows: Bool = false) {
        self.capacity = max(1, capacity)
        self.grows = grows
        payloads = .allocate(capacity: self.capacity)
        deadlines = .allocate(capacity: self.capacity)
    }

    deinit {
        payloads.deallocate()
        deadlines.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// The earliest deadline, if any.
    var firstDeadline: UInt64? { count > 0 ? deadlines[head] : nil }

    /// Returns false when the queue is full and does not grow.
    @discardableResult
    func append(_ payload: Payload, deadline: UInt64) -> Bool {
        if count == capacity {
            guard grows else { return false }
            grow()
        }
        let position = (head &+ count) % capacity
        payloads[position] = payload
        deadlines[position] = deadline
        count &+= 1
        return true
    }

    /// The first entry if its deadline is not after `now`, removed.
    func popDue(now: UInt64) -> Payload? {
        guard count > 0, deadlines[head] <= now else { return nil }
        let payload = payloads[head]
        head = (head &+ 1) % capacity
        count &-= 1
        return payload
    }

    private func grow() {
        let larger = capacity * 2
        let newPayloads = UnsafeMutablePointer<Payload>.allocate(capacity: larger)
        let newDeadlines = UnsafeMutablePointer<UInt64>.allocate(capacity: larger)
        for offset in 0..<count {
            let position = (head + offset) % capacity
            newPayloads[offset] = payloads[position]
            newDeadlines[offset] = deadlines[position]
        }
        payloads.deallocate()
        deadlines.deallocate()
        payloads = newPayloads
        deadlines = newDeadlines
        capacity = larger
        head = 0
    }
}
