/// The sessions' timers of one worker: a `DeadlineQueue` of session indices
/// per `SessionTimer` (each timer has one delay, so each queue is in order),
/// one entry per session at most: a session asks once until woken, so a
/// queue is never full. Shared by the worker's logic, which fires them
/// (`WorkerCore`), and its backend, which takes the sessions' `wake` requests.
public final class SessionTimers {
    let batch: DeadlineQueue<UInt32>
    let turn: DeadlineQueue<UInt32>
    /// How late a mirror batch's own wakeup may come (`Config.mirrorBatchWakeSlackUs`).
    public private(set) var batchSlackUs: UInt64

    public init(capacity: Int, batchSlackUs: Int = 0) {
        batch = DeadlineQueue(capacity: capacity)
        turn = DeadlineQueue(capacity: capacity)
        self.batchSlackUs = UInt64(max(0, batchSlackUs))
    }

    public var isEmpty: Bool { batch.isEmpty && turn.isEmpty }

    /// The earliest deadline asked for, if any.
    public var nextDeadlineUs: UInt64? {
        switch (batch.firstDeadline, turn.firstDeadline) {
        case let (first?, second?): min(first, second)
        case let (first, second): first ?? second
        }
    }

    /// When the worker must wake for a timer if nothing else wakes it first:
    /// a turn at its deadline; a mirror batch up to `batchSlackUs` after its
    /// own. Below saturation the worker wakes for traffic within that slack
    /// and the due batch goes out then (`WorkerCore.afterCompletions`): a
    /// batch costs no wakeup of its own, where a timer at the deadline cost
    /// one per batch, most batches holding one message at such rates.
    public var nextWakeUs: UInt64? {
        switch (batch.firstDeadline, turn.firstDeadline) {
        case let (first?, second?): min(first &+ batchSlackUs, second)
        case let (first?, nil): first &+ batchSlackUs
        case let (nil, second): second
        }
    }

    /// A reload's configuration: the slack never grows, so a session of any
    /// generation, whose deadline is its delay less its own slack, still
    /// waits no longer than its delay.
    public func lowerBatchSlack(toUs slackUs: Int) {
        batchSlackUs = min(batchSlackUs, UInt64(max(0, slackUs)))
    }

    public func add(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        switch timer {
        case .mirrorBatch: batch.append(index, deadline: deadlineUs)
        case .mirrorTurn: turn.append(index, deadline: deadlineUs)
        }
    }
}
