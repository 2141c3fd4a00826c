import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Seeded random scenarios with injected faults, without sockets.
extension SessionTests {
    // MARK: - Randomized

    @Test("random interleavings, chunk sizes, short sends and mirror faults keep every promise",
          arguments: 0..<8)
    func randomized(shard: Int) throws {
        var healthyMirrorsWhole = 0
        var enobufs = 0
        for seed in UInt64(shard * 15)..<UInt64(shard * 15 + 15) {
            let outcome = try runRandomScenario(seed: seed)
            healthyMirrorsWhole += outcome.healthyMirrorsWhole
            enobufs += outcome.enobufs
        }
        #expect(healthyMirrorsWhole > 0, "healthy mirrors got the whole stream in some runs")
        #expect(enobufs > 0, "the pool ran dry in some runs")
    }

    @Test("random aborts, of live and of lingering sessions, never break a descriptor or slot invariant",
          arguments: 0..<4)
    func randomAborts(shard: Int) throws {
        var abortedCount = 0
        for seed in UInt64(1_000 + shard * 15)..<UInt64(1_000 + shard * 15 + 15) {
            var setup = SeededGenerator(seed: seed)
            let mirrorCount = Int.random(in: 0...2, using: &setup)
            let limits = SessionLimits(mirrorCount: mirrorCount, backlogBytesMax: 1 << 20, backlogChunksMax: 8,
                                       readAheadChunks: 2, mirrorLingerMs: 1_000, mirrorFailuresBeforeBackoff: 2,
                                       mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
            let io = try FakeSessionIO(limits: limits, slotCount: 8, sessions: 3)
            let simulation = Simulation(io: io, seed: seed)
            simulation.sessionsToStart = 4
            simulation.abortOneIn = 40
            simulation.makeScript = { rng in
                var script = PeerScript()
                script.client = TestBytes.random(Int.random(in: 0...6_000, using: &rng), using: &rng)
                script.main = TestBytes.random(Int.random(in: 0...6_000, using: &rng), using: &rng)
                script.chunkMax = 900
                script.mirrors = (0..<mirrorCount).map { _ in MirrorBehavior.all.randomElement(using: &rng)! }
                return script
            }
            #expect(simulation.run(), "seed \(seed): stuck; pending \(io.pending)")
            io.expectQuiescent()
            abortedCount += simulation.aborted.count
            for key in io.startedKeys {
                let script = try #require(io.scripts[key])
                let ended = try #require(io.ended[key])
                let wasAborted = simulation.aborted.contains(key)
                #expect(ended.cause == .completed || (wasAborted && ended.cause == .aborted), "seed \(seed) \(key)")
                if ended.cause == .completed {
                    #expect(io.sent(to: .main, key) == script.client)
                    #expect(io.sent(to: .client, key) == script.main)
                } else {
                    #expect(io.sent(to: .main, key).isPrefix(of: script.client))
                    #expect(io.sent(to: .client, key).isPrefix(of: script.main))
                }
                for mirror in 0..<mirrorCount {
                    #expect(io.sent(to: .mirror(mirror), key).isPrefix(of: script.client), "seed \(seed) \(key)")
                }
            }
        }
        #expect(abortedCount > 0)
    }

    private func runRandomScenario(seed: UInt64) throws -> (healthyMirrorsWhole: Int, enobufs: Int) {
        var setup = SeededGenerator(seed: seed ^ 0xA5A5_5A5A)
        let mirrorCount = Int.random(in: 0...3, using: &setup)
        let limits = SessionLimits(
            mirrorCount: mirrorCount, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
            backlogBytesMax: [6_000, 65_536, 1 << 20].randomElement(using: &setup)!,
            backlogChunksMax: [2, 4, 16, 64].randomElement(using: &setup)!,
            readAheadChunks: Int.random(in: 1...3, using: &setup), mirrorLingerMs: 1_000,
            mirrorFailuresBeforeBackoff: 1_000, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        let io = try FakeSessionIO(limits: limits, slotCount: [4, 8, 16, 32].randomElement(using: &setup)!,
                                   sessions: Int.random(in: 1...3, using: &setup))
        let simulation = Simulation(io: io, seed: seed)
        simulation.sessionsToStart = Int.random(in: 1...5, using: &setup)
        let chunkMax = [1, 64, 700, 4_096].randomElement(using: &setup)!
        simulation.makeScript = { rng in
            var script = PeerScript()
            script.client = TestBytes.random(Int.random(in: 0...9_000, using: &rng), using: &rng)
            script.main = TestBytes.random(Int.random(in: 0...9_000, using: &rng), using: &rng)
            if chunkMax == 1 {
                script.client = Array(script.client.prefix(300))
                script.main = Array(script.main.prefix(300))
            }
            script.chunkMax = chunkMax
            script.mirrors = (0..<mirrorCount).map { _ in
                rng.chance(1, in: 2) ? .healthy : MirrorBehavior.all.randomElement(using: &rng)!
            }
            return script
        }
        let done = simulation.run()
        #expect(done, "seed \(seed): stuck with \(io.table.activeCount) sessions; pending \(io.pending)")
        io.expectQuiescent()
        var healthyWhole = 0
        var clientBytes = 0
        var mainBytes = 0
        for key in io.startedKeys {
            let script = try #require(io.scripts[key])
            let ended = try #require(io.ended[key], "seed \(seed) \(key) did not end")
            clientBytes += script.client.count
            mainBytes += script.main.count
            #expect(ended.cause == .completed, "seed \(seed) \(key)")
            #expect(io.sent(to: .main, key) == script.client, "seed \(seed) \(key): main's stream")
            #expect(io.sent(to: .client, key) == script.main, "seed \(seed) \(key): the client's stream")
            for mirror in 0..<mirrorCount {
                let stream = io.sent(to: .mirror(mirror), key)
                let behavior = script.behavior(ofMirror: mirror)
                #expect(stream.isPrefix(of: script.client), "seed \(seed) \(key) mirror\(mirror) \(behavior): hole")
                if !ended.mirrorMissing[mirror] {
                    #expect(stream == script.client, "seed \(seed) \(key) mirror\(mirror) \(behavior)")
                    if behavior.isHealthy && !script.client.isEmpty { healthyWhole += 1 }
                }
                switch behavior {
                case .refuse, .timeout, .stall:
                    #expect(ended.mirrorMissing[mirror], "seed \(seed) \(key) mirror\(mirror) \(behavior)")
                    if behavior != .stall { #expect(stream.isEmpty) }
                default:
                    break
                }
            }
        }
        #expect(io.stats.sessionsCompleted.value == UInt64(io.startedKeys.count))
        #expect(io.stats.bytesClientToMain.value == UInt64(clientBytes))
        #expect(io.stats.bytesMainToClient.value == UInt64(mainBytes))
        for mirror in 0..<mirrorCount {
            let stats = io.stats.mirrors[mirror]
            #expect(stats.bytesSent.value + stats.bytesMissed.value == UInt64(clientBytes),
                    "seed \(seed): mirror\(mirror) sent + missed == the client's bytes")
        }
        return (healthyWhole, simulation.enobufs)
    }
}
