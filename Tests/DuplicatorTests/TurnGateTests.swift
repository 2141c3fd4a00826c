import Testing
@testable import Duplicator

/// The kept turns' decisions alone (`TurnGate`, `TurnCounter`): no session,
/// no IO. `MirrorTurnTests` drives the same through a session.
@Suite("TurnGate")
struct TurnGateTests {
    /// A gate whose leg was handed 10 bytes of the client's first turn, then
    /// a second turn of 5 bytes (at offset 10).
    private static func gateWithTwoTurns(_ starts: UnsafeMutablePointer<UInt64>) -> TurnGate {
        var gate = TurnGate(starts: starts)
        gate.queued(10, beginsTurn: false)
        gate.queued(5, beginsTurn: true)
        return gate
    }

    /// The receives a leg may hold here (`TurnGate.heldChunksMax(_:mirrorShareSlots:sessionsActive:)` in a session).
    private static let heldChunksMax = 32

    private static func decide(_ gate: inout TurnGate, nowUs: UInt64 = 1_000, heldBytes: Int = 5, heldChunks: Int = 1,
                               allTurnsBegun: Bool = false) -> TurnGate.Decision {
        gate.decide(nowUs: nowUs, timeoutUs: 500, heldBytes: heldBytes, heldChunks: heldChunks,
                    heldChunksMax: Self.heldChunksMax, allTurnsBegun: allTurnsBegun)
    }

    @Test("a leg is sent up to the next turn, waits for an answer to it, then gets the turn")
    func turnWaitsForAnswer() {
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { starts.deallocate() }
        var gate = Self.gateWithTwoTurns(starts)
        #expect(Self.decide(&gate) == .send(bytesMax: 10))
        gate.sent(4)
        #expect(Self.decide(&gate) == .send(bytesMax: 6))
        gate.sent(6)
        #expect(Self.decide(&gate, nowUs: 1_000) == .wait(untilUs: 1_500))
        #expect(Self.decide(&gate, nowUs: 1_200) == .wait(untilUs: 1_500), "the deadline is set once per turn")
        gate.answered(inFlightBytes: 0)
        #expect(Self.decide(&gate, nowUs: 1_300) == .send(bytesMax: .max))
        #expect(gate.isKept && gate.deadlineUs == 0)
    }

    @Test("an answer counts only for what the mirror had been handed when it replied")
    func earlyAnswerDoesNotCount() {
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { starts.deallocate() }
        var gate = Self.gateWithTwoTurns(starts)
        gate.sent(3)
        gate.answered(inFlightBytes: 0)  // a reply to the first 3 bytes only
        gate.sent(7)
        #expect(Self.decide(&gate) == .wait(untilUs: 1_500))
        gate.answered(inFlightBytes: 0)
        #expect(Self.decide(&gate) == .send(bytesMax: .max))
    }

    @Test("bytes in flight when the mirror replies count as handed to it")
    func answerCountsBytesInFlight() {
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { starts.deallocate() }
        var gate = Self.gateWithTwoTurns(starts)
        gate.sent(4)
        gate.answered(inFlightBytes: 6)
        gate.sent(6)
        #expect(Self.decide(&gate) == .send(bytesMax: .max))
    }

    @Test("a turn not answered by its deadline stops the keeping for good")
    func timeoutStopsKeeping() {
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { starts.deallocate() }
        var gate = Self.gateWithTwoTurns(starts)
        gate.sent(10)
        #expect(Self.decide(&gate, nowUs: 1_000) == .wait(untilUs: 1_500))
        #expect(Self.decide(&gate, nowUs: 1_499) == .wait(untilUs: 1_500))
        #expect(Self.decide(&gate, nowUs: 1_500) == .stopKeeping)
        #expect(!gate.isKept && gate.deadlineUs == 0)
    }

    @Test("more than the held bytes or chunks behind an unanswered turn stops the keeping")
    func heldBoundsStopKeeping() {
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { starts.deallocate() }
        var byBytes = Self.gateWithTwoTurns(starts)
        byBytes.sent(10)
        #expect(Self.decide(&byBytes, heldBytes: TurnGate.heldBytesMax) == .wait(untilUs: 1_500))
        #expect(Self.decide(&byBytes, heldBytes: TurnGate.heldBytesMax + 1) == .stopKeeping)
        var byChunks = Self.gateWithTwoTurns(starts)
        byChunks.sent(10)
        #expect(Self.decide(&byChunks, heldChunks: Self.heldChunksMax) == .wait(untilUs: 1_500))
        #expect(Self.decide(&byChunks, heldChunks: Self.heldChunksMax + 1) == .stopKeeping)
    }

    @Test("a leg holds at most half its backlog, and its even part of half the mirrors' share among the sessions' mirror legs")
    func heldChunksBound() {
        let limits = SessionLimits(mirrorCount: 2, backlogChunksMax: 64, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 4)
        #expect(TurnGate.heldChunksMax(limits, mirrorShareSlots: 4096, sessionsActive: 1) == 32, "half the backlog")
        #expect(TurnGate.heldChunksMax(limits, mirrorShareSlots: 4096, sessionsActive: 64) == 16, "2048 slots over 128 legs")
        #expect(TurnGate.heldChunksMax(limits, mirrorShareSlots: 4096, sessionsActive: 500) == 2)
        #expect(TurnGate.heldChunksMax(limits, mirrorShareSlots: 4096, sessionsActive: 5_000) == 1, "one turn is always kept")
        var small = limits
        small.backlogChunksMax = 6
        #expect(TurnGate.heldChunksMax(small, mirrorShareSlots: 4096, sessionsActive: 1) == 3)
    }

    @Test("once every kept turn has begun and been let past, the keeping stops")
    func allTurnsPast() {
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        defer { starts.deallocate() }
        var gate = Self.gateWithTwoTurns(starts)
        #expect(Self.decide(&gate, allTurnsBegun: true) == .send(bytesMax: 10), "a turn still ahead is kept")
        gate.sent(10)
        gate.answered(inFlightBytes: 0)
        #expect(Self.decide(&gate, allTurnsBegun: true) == .stopKeeping)
        #expect(!gate.isKept)
    }

    @Test("a gate that keeps no turns records none")
    func unkeptGate() {
        var gate = TurnGate()
        gate.queued(10, beginsTurn: false)
        gate.queued(5, beginsTurn: true)
        gate.sent(15)
        #expect(!gate.isKept && gate.sentBytesTotal == 15)
        #expect(Self.decide(&gate) == .send(bytesMax: .max))
    }

    @Test("the client's bytes after main replied begin a turn, up to the kept turns")
    func counter() {
        var counter = TurnCounter()
        var begins: [Bool] = []
        begins.append(counter.clientSent(turnsMax: 2))  // the first bytes are the first turn, not a new one
        counter.mainReplied()
        begins.append(counter.clientSent(turnsMax: 2))
        begins.append(counter.clientSent(turnsMax: 2))  // no reply between: the same turn
        counter.mainReplied()
        counter.mainReplied()
        begins.append(counter.clientSent(turnsMax: 2))
        counter.mainReplied()
        begins.append(counter.clientSent(turnsMax: 2))  // past the kept turns
        #expect(begins == [false, true, false, true, false])
        #expect(counter.begun == 2)
    }
}
