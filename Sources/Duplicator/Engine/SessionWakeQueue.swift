/// Sessions waiting for one of their timers (`SessionTimer`), in the order
/// they asked: a fixed ring of table indices and deadlines, one entry per
/// session at most. Every deadline of one timer is "now plus the same
/// delay", so they come nearly in order; one asked behind a later deadline
/// (it was set while a send was in flight) fires with that one, less than a
/// delay late. No allocation after init.
///
/// A class over fixed memory rather than a struct of arrays held in a `var`:
/// changing such a struct in place calls into the array's code, so each
/// access to the `var` was checked for exclusivity at run time, several
/// times per request (BENCHMARKS.md, "Exclusivity checks on the hot path").
final class SessionWakeQueue {
    private let sessions: UnsafeMutablePointer<UInt32>
    private let deadlinesUs: UnsafeMutablePointer<UInt64>
    private let capacity: Int
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        sessions = .allocate(capacity: self.capacity)
        sessions.initialize(repeating: 0, count: self.capacity)
        deadlinesUs = .allocate(capacity: self.capacity)
        deadlinesUs.initialize(repeating: 0, count: self.capacity)
    }

    deinit {
        sessions.deallocate()
        deadlinesUs.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    var firstDeadlineUs: UInt64? { count > 0 ? deadlinesUs[head] : nil }

    func append(session index: UInt32, deadlineUs: UInt64) {
        // A session asks once until woken, so the ring is never full.
        guard count < capacity else { return }
        let position = (head + count) % capacity
        sessions[position] = index
        deadlinesUs[position] = deadlineUs
        count += 1
    }

    /// The first session if its deadline has passed, removed.
    func popDue(nowUs: UInt64) -> UInt32? {
        guard count > 0, deadlinesUs[head] <= nowUs else { return nil }
        let index = sessions[head]
        head = (head + 1) % capacity
        count -= 1
        return index
    }
}

/// The sessions' timers of one worker: a wake queue per `SessionTimer`.
/// Shared by the worker's logic, which fires them (`WorkerCore`), and its
/// backend, which takes the sessions' `wake` requests.
public final class SessionTimers {
    let batch: SessionWakeQueue
    let turn: SessionWakeQueue
    /// How late a mirror batch's own wakeup may come (`Config.mirrorBatchWakeSlackUs`).
    public let batchSlackUs: UInt64

    public init(capacity: Int, batchSlackUs: Int = 0) {
        batch = SessionWakeQueue(capacity: capacity)
        turn = SessionWakeQueue(capacity: capacity)
        self.batchSlackUs = UInt64(max(0, batchSlackUs))
    }

    public var isEmpty: Bool { batch.isEmpty && turn.isEmpty }

    /// The earliest deadline asked for, if any.
    public var nextDeadlineUs: UInt64? {
        switch (batch.firstDeadlineUs, turn.firstDeadlineUs) {
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
        switch (batch.firstDeadlineUs, turn.firstDeadlineUs) {
        case let (first?, second?): min(first &+ batchSlackUs, second)
        case let (first?, nil): first &+ batchSlackUs
        case let (nil, second): second
        }
    }

    public func add(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        switch timer {
        case .mirrorBatch: batch.append(session: index, deadlineUs: deadlineUs)
        case .mirrorTurn: turn.append(session: index, deadlineUs: deadlineUs)
        }
    }
}
