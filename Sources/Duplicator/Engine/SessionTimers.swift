/// The sessions' timers of one worker: a `DeadlineQueue` of session indices
/// per `SessionTimer` (each timer has one delay, so each queue is in order),
/// one entry per session at most: a session asks once until woken, so a
/// queue is never full. Shared by the worker's logic, which fires them
/// (`WorkerCore`), and its backend, which takes the sessions' `wake` requests.
public final class SessionTimers {
    let batch: DeadlineQueue<UInt32>
    let turn: DeadlineQueue<UInt32>

    public init(capacity: Int) {
        batch = DeadlineQueue(capacity: capacity)
        turn = DeadlineQueue(capacity: capacity)
    }

    public var isEmpty: Bool { batch.isEmpty && turn.isEmpty }

    /// The earliest deadline asked for, if any.
    public var nextDeadlineUs: UInt64? {
        switch (batch.firstDeadline, turn.firstDeadline) {
        case let (first?, second?): min(first, second)
        case let (first, second): first ?? second
        }
    }

    public func add(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        switch timer {
        case .mirrorBatch: batch.append(index, deadline: deadlineUs)
        case .mirrorTurn: turn.append(index, deadline: deadlineUs)
        }
    }
}
