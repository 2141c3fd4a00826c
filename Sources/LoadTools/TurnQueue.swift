/// When each connection's next turn (a slow read, a trickled byte) is due.
///
/// Every turn is followed by the next one a fixed interval later, and the clock only
/// moves forward, so turns are appended in due order: a FIFO ring is a priority queue
/// here, with O(1) push and pop and no allocation after init. Each connection is in it
/// at most once, so `capacity` connections always fit.
struct TurnQueue {
    private var dueNanos: [UInt64]
    private var indexes: [Int32]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        precondition(capacity >= 1)
        dueNanos = Array(repeating: 0, count: capacity)
        indexes = Array(repeating: 0, count: capacity)
    }

    var capacity: Int { dueNanos.count }
    var isEmpty: Bool { count == 0 }

    /// The earliest due time, nil when empty.
    var nextDueNanos: UInt64? { count == 0 ? nil : dueNanos[head] }

    /// Appends a turn. A `due` earlier than the last one pushed (two clock readings
    /// taken out of order) is moved up to it, so the FIFO order stays the due order.
    mutating func push(index: Int, dueNanos due: UInt64) {
        precondition(count < capacity, "TurnQueue is full")
        let tail = (head + count) % capacity
        var due = due
        if count > 0 {
            due = max(due, dueNanos[(head + count - 1) % capacity])
        }
        dueNanos[tail] = due
        indexes[tail] = Int32(index)
        count += 1
    }

    /// Removes and returns the earliest turn if it is due at `nowNanos`.
    mutating func popDue(nowNanos: UInt64) -> Int? {
        guard count > 0, dueNanos[head] <= nowNanos else { return nil }
        let index = Int(indexes[head])
        head = (head + 1) % capacity
        count -= 1
        return index
    }
}
