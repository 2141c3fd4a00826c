import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Scripted peers and a random scheduler over `FakeSessionIO`: `Simulation`
// completes the operations a session asks for in a seeded random order,
// with the faults of a `FaultPlan`.

/// What a mirror does in a simulated session.
enum MirrorBehavior: Equatable, Sendable {
    /// Accepts everything; replies nothing until our write side is shut, then EOF.
    case healthy
    /// Connect refused.
    case refuse
    /// Connect never answers: the linked timeout cancels it.
    case timeout
    /// Resets after accepting this many sends.
    case resetAfterSends(Int)
    /// Its reply stream fails with a reset.
    case discardReset
    /// Closes its write side at once (EOF) but keeps reading.
    case earlyEOF
    /// Never completes a send or a receive.
    case stall
    /// Replies a few times, then behaves as `healthy`.
    case chatty

    /// Whether a mirror behaving so is expected to get the whole stream.
    var isHealthy: Bool { self == .healthy || self == .earlyEOF || self == .chatty }

    static let all: [MirrorBehavior] = [.healthy, .refuse, .timeout, .resetAfterSends(0), .resetAfterSends(2),
                                        .discardReset, .earlyEOF, .stall, .chatty]
}

/// The bytes the client and main will send in one session, and what each mirror does.
struct PeerScript {
    var client: [UInt8] = []
    var main: [UInt8] = []
    /// The most bytes one recv completion carries.
    var chunkMax = 4096
    var mirrors: [MirrorBehavior] = []
    var clientOffset = 0
    var mainOffset = 0
    /// With `--compare`, each mirror's reply stream (a mirror's replies are
    /// then receives, not discards); none by default.
    var mirrorReplies: [[UInt8]] = []
    var mirrorReplyOffsets: [Int] = []

    /// Reply bytes mirror `index` has not sent yet.
    func mirrorReplyLeft(_ index: Int) -> Int {
        index < mirrorReplies.count ? mirrorReplies[index].count - (index < mirrorReplyOffsets.count ? mirrorReplyOffsets[index] : 0) : 0
    }

    func behavior(ofMirror index: Int) -> MirrorBehavior {
        index < mirrors.count ? mirrors[index] : .healthy
    }
}

/// Inject `result` instead of the natural outcome of the `nth` (0-based)
/// completion of `kind` on `peer`.
struct FaultPlan: CustomStringConvertible {
    var kind: OperationKind
    var peer: Leg
    var nth: Int
    var result: Int32
    var seen = 0
    var fired = false

    init(kind: OperationKind, peer: Leg, nth: Int, result: Int32) {
        self.kind = kind
        self.peer = peer
        self.nth = nth
        self.result = result
    }

    var description: String { "fault(\(kind) on \(peer) #\(nth) -> \(result))" }
}

/// Completes the operations of a `FakeSessionIO` in a random (seeded) order
/// with outcomes taken from each session's `PeerScript`: random chunk sizes,
/// partial sends, cancellations that race with natural results, mirror
/// faults, and time passing when only lingering mirrors are left.
final class Simulation {
    let io: FakeSessionIO
    var rng: SeededGenerator
    var plan: FaultPlan?
    var partialSends = true
    /// A cancelled operation sometimes completes with its own result first.
    var raceCancels = true
    /// EOF completions sometimes carry an (empty) selected slot.
    var eofWithBuffer = true
    var sessionsToStart = 0
    /// When > 0: each step aborts a random active session with chance 1 in this.
    var abortOneIn = 0
    /// Each step moves the microsecond clock by up to this (mirror batch delays).
    var microsecondsPerStep: UInt64 = 0
    private(set) var aborted: Set<SessionKey> = []
    var makeScript: (inout SeededGenerator) -> PeerScript = { _ in PeerScript() }
    /// The worker is asked to stop at this step (its tick sees the request),
    /// and "the kernel" ends its accept some steps later.
    var stop: (atStep: Int, mode: StopMode)?
    private var stopMode = StopMode.running
    private var acceptEnded = false
    private(set) var steps = 0
    private(set) var timeAdvances = 0
    private(set) var enobufs = 0

    init(io: FakeSessionIO, seed: UInt64) {
        self.io = io
        rng = SeededGenerator(seed: seed)
    }

    /// Starts a session with `script`.
    @discardableResult
    func start(_ script: PeerScript) -> SessionKey? {
        // The script is read only when operations complete, after `start`.
        guard io.start() != nil, let key = io.lastKey else { return nil }
        io.scripts[key] = script
        return key
    }

    /// Runs until nothing is left to do. Returns false when sessions are
    /// still active but nothing can move (a stuck session) or `maxSteps` passed.
    @discardableResult
    func run(maxSteps: Int = 200_000) -> Bool {
        var idleRounds = 0
        while steps < maxSteps {
            steps += 1
            if let stop, steps == stop.atStep {
                stopMode = stop.mode
                io.workerTick(stopMode)
                continue
            }
            if stopMode != .running && !acceptEnded && rng.chance(1, in: 8) {
                acceptEnded = true
                io.core.deliver(WorkerCompletion(tag: WorkerCore<FakeSessionIO>.acceptTag, result: -ECANCELED), io: io)
                continue
            }
            if sessionsToStart > 0, io.table.freeCount > 0,
               io.table.activeCount == 0 || rng.chance(1, in: 16) {
                sessionsToStart -= 1
                start(makeScript(&rng))
                continue
            }
            if abortOneIn > 0, rng.chance(1, in: abortOneIn),
               let victim = io.table.sessions.filter(\.isActive).randomElement(using: &rng) {
                let key = SessionKey(victim)
                aborted.insert(key)
                io.abort(key)
                continue
            }
            if microsecondsPerStep > 0 {
                io.context.nowUs += UInt64.random(in: 0...microsecondsPerStep, using: &rng)
                io.fireDueFlushes()
            }
            let candidates = io.pending.filter(isEligible)
            if let op = candidates.randomElement(using: &rng) {
                idleRounds = 0
                complete(op)
                if rng.chance(1, in: 4) { io.completeCancelledCancels() }
                io.resumeWaiters()
                continue
            }
            if !io.waiters.isEmpty && !io.freeSlots.isEmpty {
                io.resumeWaiters()
                continue
            }
            io.completeCancelledCancels()
            if sessionsToStart > 0 && io.table.freeCount > 0 {
                sessionsToStart -= 1
                start(makeScript(&rng))
                continue
            }
            if stopMode != .running && !acceptEnded {
                acceptEnded = true
                io.core.deliver(WorkerCompletion(tag: WorkerCore<FakeSessionIO>.acceptTag, result: -ECANCELED), io: io)
                continue
            }
            if !io.flushRequests.isEmpty {
                // Only a mirror batch waits: let its delay pass.
                io.advanceToNextFlush()
                continue
            }
            guard io.table.activeCount > 0 else { return io.flushRequests.isEmpty }
            // Only lingering mirrors (or nothing) can move: let time pass.
            idleRounds += 1
            if idleRounds > 3 { return false }
            timeAdvances += 1
            io.context.nowMs += UInt64(io.limits.mirrorLingerMs) + 1
            io.tickAll()
            if stopMode != .running { io.workerTick(stopMode) }
        }
        return false
    }

    private func behavior(_ op: FakeOp) -> MirrorBehavior? {
        guard op.peer.isMirror else { return nil }
        return io.scripts[op.key]?.behavior(ofMirror: op.peer.mirrorIndex) ?? .healthy
    }

    func isEligible(_ op: FakeOp) -> Bool {
        let record = io.fds[op.fd]!
        if record.cancelRequested { return true }
        guard let behavior = behavior(op) else { return true }
        switch op.kind {
        case .send:
            return behavior != .stall
        case .recv:
            // A mirror's reply read to be compared (`--compare`).
            guard op.peer.isMirror else { return true }
            let index = op.peer.mirrorIndex
            switch behavior {
            case .stall: return false
            case .discardReset: return true
            case .earlyEOF: return !record.earlyEOFDelivered || record.shutdownCompleted
            default: return (io.scripts[op.key]?.mirrorReplyLeft(index) ?? 0) > 0 || record.shutdownCompleted
            }
        case .discard:
            switch behavior {
            case .stall: return false
            case .discardReset: return true
            case .earlyEOF: return !record.earlyEOFDelivered || record.shutdownCompleted
            case .chatty: return record.discardCompletions < 3 || record.shutdownCompleted
            default: return record.shutdownCompleted
            }
        default:
            return true
        }
    }

    private func complete(_ op: FakeOp) {
        let record = io.fds[op.fd]!
        if record.cancelRequested && !(raceCancels && rng.chance(1, in: 4)) {
            io.deliver(op, result: -ECANCELED)
            return
        }
        if var plan = plan, !plan.fired, plan.kind == op.kind, plan.peer == op.peer, !record.cancelRequested {
            defer { self.plan = plan }
            if plan.seen == plan.nth {
                plan.fired = true
                io.deliver(op, result: plan.result)
                return
            }
            plan.seen += 1
        }
        switch op.kind {
        case .connect:
            switch behavior(op) {
            case .refuse?: io.deliver(op, result: -ECONNREFUSED)
            case .timeout?: io.deliver(op, result: -ECANCELED)
            default: io.deliver(op, result: 0)
            }
        case .recv:
            if op.peer.isMirror {
                completeMirrorReply(op, mirror: op.peer.mirrorIndex, record: record)
                return
            }
            var script = io.scripts[op.key] ?? PeerScript()
            let isClient = op.peer == .client
            let stream = isClient ? script.client : script.main
            let offset = isClient ? script.clientOffset : script.mainOffset
            if offset < stream.count {
                let most = min(stream.count - offset, script.chunkMax, io.pool.slotSize)
                let size = Int.random(in: 1...most, using: &rng)
                let result = io.deliverRecv(op, Array(stream[offset..<offset + size]))
                if result == -ENOBUFS { enobufs += 1; return }
                if isClient { script.clientOffset += size } else { script.mainOffset += size }
                io.scripts[op.key] = script
            } else {
                io.deliverEOF(op, withBuffer: eofWithBuffer && rng.chance(1, in: 2))
            }
        case .send:
            if case .resetAfterSends(let count)? = behavior(op), record.sendCompletions >= count {
                io.deliver(op, result: rng.chance(1, in: 2) ? -ECONNRESET : -EPIPE)
                return
            }
            let count = partialSends && rng.chance(1, in: 2) ? Int.random(in: 1...op.length, using: &rng) : op.length
            io.deliver(op, result: Int32(count))
        case .discard:
            switch behavior(op) {
            case .discardReset?:
                io.deliver(op, result: -ECONNRESET)
            case .earlyEOF? where !record.earlyEOFDelivered:
                io.markEarlyEOF(op.fd)
                io.deliver(op, result: 0)
            case .chatty? where record.discardCompletions < 3 && !record.shutdownCompleted:
                io.deliver(op, result: Int32.random(in: 1...65536, using: &rng))
            default:
                io.deliver(op, result: 0)
            }
        case .shutdown:
            io.deliver(op, result: 0)
        default:
            io.deliver(op, result: 0)
        }
    }
}

extension Simulation {
    /// A mirror's receive under `--compare`: a random piece of its scripted
    /// reply, its EOF once the reply is sent (and our side shut), or its fault.
    fileprivate func completeMirrorReply(_ op: FakeOp, mirror index: Int, record: FDRecord) {
        var script = io.scripts[op.key] ?? PeerScript()
        switch io.scripts[op.key]?.behavior(ofMirror: index) ?? .healthy {
        case .discardReset:
            io.deliver(op, result: -ECONNRESET)
            return
        case .earlyEOF where !record.earlyEOFDelivered:
            io.markEarlyEOF(op.fd)
            io.deliverEOF(op, withBuffer: false)
            return
        default:
            break
        }
        let left = script.mirrorReplyLeft(index)
        guard left > 0 else {
            io.deliverEOF(op, withBuffer: eofWithBuffer && rng.chance(1, in: 2))
            return
        }
        while script.mirrorReplyOffsets.count <= index { script.mirrorReplyOffsets.append(0) }
        let offset = script.mirrorReplyOffsets[index]
        let size = Int.random(in: 1...min(left, script.chunkMax, io.pool.slotSize), using: &rng)
        let result = io.deliverRecv(op, Array(script.mirrorReplies[index][offset..<offset + size]))
        if result == -ENOBUFS {
            enobufs += 1
            return
        }
        script.mirrorReplyOffsets[index] += size
        io.scripts[op.key] = script
    }
}
