import Duplicator
import Testing

/// `AcceptGatheringPolicy`: when new clients go to one worker and when to
/// all, from the workers' busy fractions tick by tick (pure, no process).
@Suite("AcceptGatheringPolicy")
struct AcceptGatheringPolicyTests {
    static let thresholds = AcceptGatheringPolicy.Thresholds(spreadBusyMin: 0.5, gatherBusyMax: 0.25, quietMs: 2_000,
                                                             quietMaxMs: 16_000, flapWindowMs: 30_000)

    /// Feeds every worker `busy` at each 100 ms tick from `fromMs` for `forMs`;
    /// the times at which the mode changed, and to what.
    static func run(_ policy: inout AcceptGatheringPolicy, busy: [Double], fromMs: UInt64, forMs: UInt64,
                    halfFull: Bool = false) -> [(atMs: UInt64, mode: AcceptGatheringPolicy.Mode)] {
        var changes: [(atMs: UInt64, mode: AcceptGatheringPolicy.Mode)] = []
        for nowMs in stride(from: fromMs, to: fromMs + forMs, by: 100) {
            for (worker, fraction) in busy.enumerated() {
                if let mode = policy.observe(worker: worker, busy: fraction, tableHalfFull: halfFull && worker == 0,
                                             nowMs: nowMs) {
                    changes.append((nowMs, mode))
                }
            }
        }
        return changes
    }

    @Test("it starts gathered and stays so while every worker is far from busy")
    func startsGathered() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        #expect(policy.mode == .gathered)
        #expect(Self.run(&policy, busy: [0.45, 0.02], fromMs: 0, forMs: 10_000).isEmpty)
        #expect(policy.mode == .gathered)
    }

    @Test("one tick of a busy worker spreads at once")
    func spreadsAtOnce() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        #expect(policy.observe(worker: 0, busy: 0.2, tableHalfFull: false, nowMs: 100) == nil)
        #expect(policy.observe(worker: 0, busy: 0.51, tableHalfFull: false, nowMs: 200) == .spread)
        #expect(policy.mode == .spread)
        // Busy on any worker counts: the gathered one need not be worker 0.
        var other = AcceptGatheringPolicy(workers: 3, thresholds: Self.thresholds)
        #expect(other.observe(worker: 2, busy: 0.9, tableHalfFull: false, nowMs: 100) == .spread)
    }

    @Test("a half-full session table spreads, however idle the worker")
    func halfFullSpreads() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        let changes = Self.run(&policy, busy: [0.01, 0], fromMs: 0, forMs: 5_000, halfFull: true)
        #expect(changes.count == 1 && changes.first?.mode == .spread && changes.first?.atMs == 0)
    }

    @Test("it gathers again only after the workers together were quiet for quietMs")
    func gathersAfterQuiet() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        _ = Self.run(&policy, busy: [0.9, 0.9], fromMs: 0, forMs: 1_000)
        #expect(policy.mode == .spread)
        // Each worker quiet, but together above gatherBusyMax: stays spread.
        #expect(Self.run(&policy, busy: [0.15, 0.15], fromMs: 1_000, forMs: 10_000).isEmpty)
        // Quiet enough together: gathers after 2 s of it, not before.
        let changes = Self.run(&policy, busy: [0.1, 0.1], fromMs: 11_000, forMs: 5_000)
        #expect(changes.count == 1)
        #expect(changes.first?.mode == .gathered && changes.first?.atMs == 13_000)
    }

    @Test("one busy tick in the quiet starts the quiet again")
    func busyTickRestartsQuiet() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        _ = Self.run(&policy, busy: [0.9, 0.9], fromMs: 0, forMs: 500)
        _ = Self.run(&policy, busy: [0.05, 0.05], fromMs: 500, forMs: 1_500)
        _ = Self.run(&policy, busy: [0.3, 0.05], fromMs: 2_000, forMs: 100)
        #expect(policy.mode == .spread)
        let changes = Self.run(&policy, busy: [0.05, 0.05], fromMs: 2_100, forMs: 3_000)
        #expect(changes.first?.atMs == 4_100)
    }

    @Test("a load that comes and goes does not flap: each quick return doubles the quiet needed, up to quietMaxMs")
    func doesNotFlap() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        // Load for 1 s, quiet for 9 s, for two minutes.
        var changes: [(atMs: UInt64, mode: AcceptGatheringPolicy.Mode)] = []
        for cycle in 0..<UInt64(12) {
            changes += Self.run(&policy, busy: [0.8, 0.1], fromMs: cycle * 10_000, forMs: 1_000)
            changes += Self.run(&policy, busy: [0.05, 0.05], fromMs: cycle * 10_000 + 1_000, forMs: 9_000)
        }
        // Without damping: 24 changes (a spread and a gather per cycle).
        // With it the quiet needed grows 2, 4, 8, 16 s: past 9 s it never gathers.
        #expect(changes.count <= 8, "\(changes.count) changes: \(changes)")
        #expect(policy.quietNeededMs == 16_000)
        #expect(policy.mode == .spread)
    }

    @Test("a gather that lasted past the flap window brings the quiet needed back")
    func longGatherResetsDamping() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        _ = Self.run(&policy, busy: [0.9, 0], fromMs: 0, forMs: 100)
        _ = Self.run(&policy, busy: [0.05, 0], fromMs: 100, forMs: 3_000)
        #expect(policy.mode == .gathered)
        _ = Self.run(&policy, busy: [0.9, 0], fromMs: 3_100, forMs: 100)
        #expect(policy.quietNeededMs == 4_000)
        _ = Self.run(&policy, busy: [0.05, 0], fromMs: 3_200, forMs: 5_000)
        #expect(policy.mode == .gathered)
        // Gathered for a minute: the next spread is no flap.
        _ = Self.run(&policy, busy: [0.05, 0], fromMs: 8_200, forMs: 60_000)
        _ = Self.run(&policy, busy: [0.9, 0], fromMs: 68_200, forMs: 100)
        #expect(policy.mode == .spread && policy.quietNeededMs == 2_000)
    }

    @Test("an unknown worker index changes nothing")
    func unknownWorker() {
        var policy = AcceptGatheringPolicy(workers: 2, thresholds: Self.thresholds)
        #expect(policy.observe(worker: 5, busy: 1, tableHalfFull: true, nowMs: 0) == nil)
        #expect(policy.mode == .gathered)
    }
}
