/// Sessions waiting for one of their timers (`SessionTimer`), in the order
/// they asked: a fixed ring of table indices and deadlines, one entry per
/// session at most. Every deadline of one timer is "now plus the same
/// delay", so they come nearly in order; one asked behind a later deadline
/// (it was set while a send was in flight) fires with that one, less than a
/// delay late. No allocation after init.
struct SessionWakeQueue {
    private var sessions: [UInt32]
    private var deadlinesUs: [UInt64]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        sessions = Array(repeating: 0, count: max(1, capacity))
        deadlinesUs = Array(repeating: 0, count: max(1, capacity))
    }

    var isEmpty: Bool { count == 0 }

    var firstDeadlineUs: UInt64? { count > 0 ? deadlinesUs[head] : nil }

    mutating func append(session index: UInt32, deadlineUs: UInt64) {
        // A session asks once until woken, so the ring is never full.
        guard count < sessions.count else { return }
        let position = (head + count) % sessions.count
        sessions[position] = index
        deadlinesUs[position] = deadlineUs
        count += 1
    }

    /// The first session if its deadline has passed, removed.
    mutating func popDue(nowUs: UInt64) -> UInt32? {
        guard count > 0, deadlinesUs[head] <= nowUs else { return nil }
        let index = sessions[head]
        head = (head + 1) % sessions.count
        count -= 1
        return index
    }
}

/// The sessions' timers of one worker: a wake queue per `SessionTimer`.
/// Shared by the worker's logic, which fires them (`WorkerCore`), and its
/// backend, which takes the sessions' `wake` requests.
public final class SessionTimers {
    var batch: SessionWakeQueue
    var turn: SessionWakeQueue

    public init(capacity: Int) {
        batch = SessionWakeQueue(capacity: capacity)
        turn = SessionWakeQueue(capacity: capacity)
    }

    public var isEmpty: Bool { batch.isEmpty && turn.isEmpty }

    /// The earliest deadline asked for, if any.
    public var nextDeadlineUs: UInt64? {
        switch (batch.firstDeadlineUs, turn.firstDeadlineUs) {
        case let (first?, second?): min(first, second)
        case let (first, second): first ?? second
        }
    }

    public func add(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        switch timer {
        case .mirrorBatch: batch.append(session: index, deadlineUs: deadlineUs)
        case .mirrorTurn: turn.append(session: index, deadlineUs: deadlineUs)
        }
    }
}
