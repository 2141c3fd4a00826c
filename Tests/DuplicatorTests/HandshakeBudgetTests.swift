import Testing
@testable import Duplicator

/// The handshakes' budget per round of the loop (`HandshakeBudget`): which
/// waiting handshake steps next, and when a round has spent its share. No
/// IO, no clock but the tests'.
@Suite("HandshakeBudget")
struct HandshakeBudgetTests {
    /// Steps the round allows, a step taking `stepUs` each from `startUs`.
    private func round(_ budget: inout HandshakeBudget, startUs: UInt64 = 1_000, stepUs: UInt64,
                       bounded: Bool = true) -> [Int] {
        budget.startRound(bounded: bounded)
        var stepped: [Int] = []
        var nowUs = startUs
        while let index = budget.next(nowUs: nowUs) {
            stepped.append(index)
            nowUs += stepUs
        }
        return stepped
    }

    @Test("first come, first stepped; a place waits once however often its bytes come")
    func order() {
        var budget = HandshakeBudget(capacity: 8, roundMicrosecondsMax: 1_000, roundStepsMax: 8)
        #expect(!budget.hasWork && budget.next(nowUs: 0) == nil)
        for index in [5, 2, 5, 7, 2] { budget.enqueue(index) }
        #expect(budget.hasWork && budget.count == 3)
        #expect(round(&budget, stepUs: 1) == [5, 2, 7])
        #expect(!budget.hasWork)
        // Stepped, it may wait again.
        budget.enqueue(5)
        #expect(round(&budget, stepUs: 1) == [5])
    }

    @Test("a round that starts with a step as long as the budget steps that one only; the rest wait for the next rounds")
    func longStepsOnePerRound() {
        var budget = HandshakeBudget(capacity: 64, roundMicrosecondsMax: 50, roundStepsMax: 8)
        for index in 0..<50 { budget.enqueue(index) }
        // A flood of ClientHellos: a server's first flight takes ~150 us.
        for expected in 0..<50 {
            #expect(round(&budget, stepUs: 150) == [expected])
        }
        #expect(!budget.hasWork)
    }

    @Test("a round not bounded (the steps go to the handshake thread) takes every place waiting, in order; the next is bounded again")
    func unboundedRound() {
        var budget = HandshakeBudget(capacity: 64, roundMicrosecondsMax: 50, roundStepsMax: 8)
        for index in 0..<20 { budget.enqueue(index) }
        #expect(round(&budget, stepUs: 150, bounded: false) == Array(0..<20))
        #expect(!budget.hasWork)
        for index in 0..<3 { budget.enqueue(index) }
        #expect(round(&budget, stepUs: 150) == [0])
    }

    @Test("cheap steps go several to a round, within the time and the count")
    func cheapStepsShareARound() {
        var budget = HandshakeBudget(capacity: 64, roundMicrosecondsMax: 50, roundStepsMax: 8)
        for index in 0..<20 { budget.enqueue(index) }
        // 10 us each: steps start at 0, 10, 20, 30, 40 us; the one at 50 waits.
        #expect(round(&budget, stepUs: 10) == [0, 1, 2, 3, 4])
        // 1 us each: the count bounds the round.
        #expect(round(&budget, stepUs: 1) == Array(5..<13))
        #expect(budget.count == 7)
    }

    @Test("the budget is per round: a spent round steps nothing more until the next starts; the first step is always taken")
    func perRound() {
        var budget = HandshakeBudget(capacity: 4, roundMicrosecondsMax: 0, roundStepsMax: 1)
        for index in 0..<3 { budget.enqueue(index) }
        budget.startRound()
        #expect(budget.next(nowUs: 10) == 0)
        #expect(budget.next(nowUs: 10) == nil)
        #expect(budget.next(nowUs: 1_000_000) == nil)
        budget.startRound()
        #expect(budget.next(nowUs: 20) == 1)
        #expect(budget.hasWork)
    }

    @Test("the queue wraps around its ring of places")
    func wraps() {
        var budget = HandshakeBudget(capacity: 3, roundMicrosecondsMax: 1_000, roundStepsMax: 2)
        var stepped: [Int] = []
        for index in [0, 1, 2] { budget.enqueue(index) }
        stepped += round(&budget, stepUs: 1)
        for index in [0, 1] { budget.enqueue(index) }
        stepped += round(&budget, stepUs: 1)
        stepped += round(&budget, stepUs: 1)
        #expect(stepped == [0, 1, 2, 0, 1])
        #expect(!budget.hasWork)
    }
}
