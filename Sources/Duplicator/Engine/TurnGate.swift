// Kept turns (`--mirror-turns`). A protocol may depend on the order of the
// conversation's turns: with libpq's defaults the client sends an 8-byte
// SSLRequest, waits for main's "N", then its startup message; a PostgreSQL
// mirror that gets both before its backend has read the first refuses the
// session ("received unencrypted data after SSL request"). So for the first
// `mirrorTurns` turns (client bytes after main replied), a mirror gets a turn
// only once it has answered the one before (a reply after that turn was
// handed to it), or after `mirrorTurnTimeoutUs`; a mirror that lets a turn
// time out, or lets more than `TurnGate.heldBytesMax` or `heldChunksMax` pile
// up behind one, is not waited for again in the session. Then its sends
// batch freely. Main never waits for any of it.

/// Where the client's turns begin, for the whole session: bytes the client
/// sends after main replied begin a new turn, up to the kept turns' number.
struct TurnCounter {
    /// Main sent bytes since the client's last receive.
    private var mainRepliedSinceClient = false
    /// Turns begun after the client's first.
    private(set) var begun = 0

    /// Main's bytes reached us: the client's next bytes begin a new turn.
    @inline(__always)
    mutating func mainReplied() { mainRepliedSinceClient = true }

    /// The client's bytes arrived: whether they begin a turn to keep.
    @inline(__always)
    mutating func clientSent(turnsMax: Int) -> Bool {
        guard mainRepliedSinceClient else { return false }
        mainRepliedSinceClient = false
        guard begun < turnsMax else { return false }
        begun += 1
        return true
    }
}

/// One mirror leg's kept turns: where each begins in the stream it is
/// handed, what it was sent, what it answered, and so how much it may be
/// sent now. No IO: the session asks `decide` before each send and acts on
/// the answer.
struct TurnGate {
    /// Bytes that may wait behind a turn a mirror has not answered; past
    /// them (or past `heldChunksMax(_:mirrorShareSlots:sessionsActive:)`
    /// receives), turns are no longer kept for that mirror. Negotiation
    /// turns are a few bytes each, but a slow mirror (a PostgreSQL backend
    /// still forking under load) may fall many of the client's small turns
    /// behind main before it answers the first: pgbench's queries are
    /// about 150 bytes, one receive each, one per round trip of main.
    /// Giving up on it after 4 receives, then 32, sent it the startup
    /// message behind an unanswered SSLRequest (in CI, under load), the
    /// very thing kept turns are for. A bulk stream is not a negotiation:
    /// past 64 KiB it goes.
    static let heldBytesMax = 64 * 1024

    /// The receives' bound for a leg: half the mirror's backlog at most, so
    /// that the backlog never cuts the mirror for lag while it holds turns;
    /// and its even part of half the mirrors' share of the pool
    /// (`mirrorShareSlots`) among the worker's `sessionsActive` sessions'
    /// mirror legs, so that held turns cost the pool a bounded part
    /// whatever the number of sessions. A sink mirror never answers a turn:
    /// a thousand sessions each holding 16 turns behind their first took
    /// the whole share, and the sessions that then let a slot go had their
    /// mirror cut for it (97 to 181 of 1000 in ResilienceTests, in CI).
    /// Half the share only, and per leg: a bulk stream lagging in one
    /// session (a COPY into a PostgreSQL mirror) must not keep a new
    /// session's mirror from its SSLRequest's answer.
    static func heldChunksMax(_ limits: SessionLimits, mirrorShareSlots: Int, sessionsActive: Int) -> Int {
        let legs = max(1, sessionsActive &* limits.mirrorCount)
        return max(1, min(limits.backlogChunksMax / 2, mirrorShareSlots / 2 / legs))
    }

    /// What the leg may be sent now.
    enum Decision: Equatable {
        /// Up to this many bytes (`Int.max`: no limit).
        case send(bytesMax: Int)
        /// Nothing until the mirror answers, or this deadline passes.
        case wait(untilUs: UInt64)
        /// Turns are no longer kept for this leg (all are past, or the
        /// mirror did not answer one in time): send freely from now on.
        case stopKeeping
    }

    /// The stream offsets at which the kept turns begin: as many entries as
    /// the session keeps turns, in the session's memory.
    private let starts: UnsafeMutablePointer<UInt64>?
    /// The leg waits for answers to the first turns; off once they are
    /// past, or once the mirror let one time out.
    private(set) var isKept: Bool
    /// Client bytes ever queued to this leg, and sent.
    private var queuedBytesTotal: UInt64 = 0
    private(set) var sentBytesTotal: UInt64 = 0
    /// One more than the stream offset up to which the mirror had been
    /// handed our bytes when it last replied (0: it never replied): it
    /// answered every turn that starts before.
    private var answeredBeforeBytes: UInt64 = 0
    /// Turn starts recorded, and the first one the leg has not been let past.
    private var count = 0
    private var next = 0
    /// When the mirror, having been sent all of a turn, must have answered
    /// it (0: not waiting).
    private(set) var deadlineUs: UInt64 = 0

    /// A leg that keeps no turns (the client, main, or with no kept turns).
    init() {
        starts = nil
        isKept = false
    }

    /// A mirror leg that keeps turns: `starts` has room for every kept turn.
    init(starts: UnsafeMutablePointer<UInt64>) {
        self.starts = starts
        isKept = true
    }

    /// Client bytes were queued to the leg; `beginsTurn`: they begin a kept turn.
    @inline(__always)
    mutating func queued(_ length: Int, beginsTurn: Bool) {
        if beginsTurn && isKept, let starts {
            starts[count] = queuedBytesTotal
            count &+= 1
        }
        queuedBytesTotal &+= UInt64(length)
    }

    @inline(__always)
    mutating func sent(_ length: Int) {
        sentBytesTotal &+= UInt64(length)
    }

    /// The mirror replied: it answered what it had been handed so far, the
    /// send in flight (`inFlightBytes`) included.
    mutating func answered(inFlightBytes: Int) {
        answeredBeforeBytes = sentBytesTotal &+ UInt64(inFlightBytes) &+ 1
    }

    /// What the leg may be sent now: up to the start of the first kept turn
    /// it has not been let past, or nothing while it owes an answer.
    /// `heldBytes` and `heldChunks` are what waits in its queue, and
    /// `heldChunksMax` the most receives it may hold (`heldChunksMax(_:)`);
    /// `allTurnsBegun`: the client began every turn that is kept.
    mutating func decide(nowUs: UInt64, timeoutUs: Int, heldBytes: Int, heldChunks: Int, heldChunksMax: Int,
                         allTurnsBegun: Bool) -> Decision {
        while next < count, let starts {
            let start = starts[next]
            let sent = sentBytesTotal
            if start > sent { return .send(bytesMax: Int(start &- sent)) }
            // All of the previous turn is sent: has the mirror answered it?
            if answeredBeforeBytes > start {
                next &+= 1
                deadlineUs = 0
                continue
            }
            if deadlineUs == 0 {
                deadlineUs = nowUs &+ UInt64(timeoutUs)
            }
            // Negotiation turns are a few bytes; a stream piling up behind an
            // unanswered turn is not one, and must not pin slots (a mirror
            // that never replies would otherwise hold a fast stream for the
            // whole timeout).
            if nowUs >= deadlineUs || heldBytes > Self.heldBytesMax || heldChunks > heldChunksMax {
                // No answer in time: this mirror is not waited for again.
                next = count
                stop()
                return .stopKeeping
            }
            return .wait(untilUs: deadlineUs)
        }
        if allTurnsBegun {
            stop()
            return .stopKeeping
        }
        return .send(bytesMax: Int.max)
    }

    /// Turns are no longer kept for this leg.
    mutating func stop() {
        isKept = false
        deadlineUs = 0
    }
}
