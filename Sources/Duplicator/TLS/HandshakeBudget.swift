/// Handshakes wait their turn behind established sessions (promise 11).
///
/// A handshake step cannot be cut short: a server's first flight (a key
/// exchange and a signature) takes a hundred microseconds or more of the
/// worker's one thread. Stepping every handshake as its bytes arrive let a
/// batch of fifty ClientHellos hold every established session's bytes for
/// as long as all fifty took (a keep-alive client kept 4% of its rate
/// beside a flood). So a handshake's bytes are fed to its stream when they
/// arrive (a copy, nothing lost) and its leg waits here; after a round's
/// completions, once the established sessions' work is done, the waiting
/// handshakes step first come first served while the round's budget lasts:
/// the first step always (handshakes always progress), more only within
/// `roundMicrosecondsMax` of the first one's start and up to
/// `roundStepsMax`. The rest wait for the next round, and the loop does not
/// sleep while any waits (`hasWork`). HAProxy's scheduler does the same
/// with its class of heavy tasks (TLS handshakes), a few per loop.
///
/// Pure: the caller passes a monotonic clock's microseconds.
struct HandshakeBudget {
    /// About a third of one server first flight (ECDSA P-256 and X25519 in
    /// OpenSSL 3): a round that starts with one runs that one only; the
    /// cheap steps (a client's Finished) go several to a round.
    static let roundMicrosecondsMaxDefault: UInt64 = 50
    static let roundStepsMaxDefault = 8

    let roundMicrosecondsMax: UInt64
    let roundStepsMax: Int
    /// Waiting legs' places, in arrival order (a ring of `capacity`).
    private var order: [Int32]
    /// Per place: whether it waits in `order` (a place waits once).
    private var waits: [Bool]
    private var head = 0
    private(set) var count = 0
    private var stepsThisRound = 0
    private var roundIsBounded = true
    private var firstStepUs: UInt64 = 0

    /// - Parameter capacity: the places (legs) that may wait.
    init(capacity: Int, roundMicrosecondsMax: UInt64 = Self.roundMicrosecondsMaxDefault,
         roundStepsMax: Int = Self.roundStepsMaxDefault) {
        precondition(roundStepsMax >= 1, "at least one step a round")
        order = Array(repeating: 0, count: max(1, capacity))
        waits = Array(repeating: false, count: max(1, capacity))
        self.roundMicrosecondsMax = roundMicrosecondsMax
        self.roundStepsMax = roundStepsMax
    }

    /// Handshake steps wait: the loop must not sleep.
    var hasWork: Bool { count > 0 }

    /// Place `index` has something to step on; a place already waiting keeps its turn.
    mutating func enqueue(_ index: Int) {
        guard index >= 0, index < waits.count, !waits[index] else { return }
        waits[index] = true
        order[(head + count) % order.count] = Int32(index)
        count += 1
    }

    /// A new round: the budget is whole again. Not `bounded`: every place
    /// waiting goes this round (the steps run elsewhere: the handshake thread).
    mutating func startRound(bounded: Bool = true) {
        stepsThisRound = 0
        roundIsBounded = bounded
    }

    /// The next place to step, if this round's budget allows one more step
    /// now (`nowUs`); nil once it is spent or nothing waits.
    mutating func next(nowUs: UInt64) -> Int? {
        guard count > 0 else { return nil }
        if stepsThisRound == 0 {
            firstStepUs = nowUs
        } else if roundIsBounded && (stepsThisRound >= roundStepsMax || nowUs &- firstStepUs >= roundMicrosecondsMax) {
            return nil
        }
        stepsThisRound += 1
        let index = Int(order[head])
        head = (head + 1) % order.count
        count -= 1
        waits[index] = false
        return index
    }
}
