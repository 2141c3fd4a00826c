import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Coalesced mirror sends, driven through `FakeSessionIO`: a mirror's queued
// chunks go out together in one gathered send once enough bytes wait or the
// oldest has waited the batch delay; main never waits; the mirror's stream
// stays exact under short sends and cuts.

private func batchLimits(mirrors: Int = 1, batchBytes: Int = 64 * 1024, delayUs: Int = 1_000,
                         backlogBytesMax: Int = 1 << 20, backlogChunksMax: Int = 16) -> SessionLimits {
    SessionLimits(mirrorCount: mirrors, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                  backlogBytesMax: backlogBytesMax, backlogChunksMax: backlogChunksMax, readAheadChunks: 2,
                  mirrorLingerMs: 2_000, mirrorFailuresBeforeBackoff: 3,
                  mirrorBatchBytes: batchBytes, mirrorBatchDelayUs: delayUs, mirrorTurns: 0)
}

@Suite("SessionTests.MirrorBatch")
struct MirrorBatchTests {
    /// The client sends `pieces` one receive at a time; main's sends complete at once.
    private func clientSends(_ io: FakeSessionIO, _ pieces: [[UInt8]], everyUs: UInt64 = 100) {
        for piece in pieces {
            io.completeRecv(.client, piece)
            io.flushSends(.main)
            io.context.nowUs += everyUs
        }
    }

    @Test("a mirror's bytes wait for the batch delay, then go out in one gathered send; main never waits")
    func delayThenGatheredSend() throws {
        let io = try FakeSessionIO(limits: batchLimits(), slotCount: 16)
        io.context.nowUs = 10_000
        try #require(io.start() != nil)
        io.connectAll()
        let pieces = (0..<3).map { TestBytes.random(300, seed: UInt64($0)) }
        for (index, piece) in pieces.enumerated() {
            io.completeRecv(.client, piece)
            #expect(io.hasPending(.send, .main), "main's send is asked for at once")
            io.flushSends(.main)
            #expect(!io.hasPending(.send, .mirror(0)), "receive \(index): the mirror waits for its batch")
            io.context.nowUs += 100
        }
        #expect(io.flushRequests.count == 1, "one wake-up asked for, at the oldest byte's deadline")
        #expect(io.flushRequests.first?.deadlineUs == 11_000)
        io.context.nowUs = 10_999
        io.fireDueFlushes()
        #expect(!io.hasPending(.send, .mirror(0)))
        io.context.nowUs = 11_000
        io.fireDueFlushes()
        let send = try #require(io.pendingOp(.send, .mirror(0)))
        #expect(send.segments.count == 3 && send.length == 900)
        io.completeSend(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == pieces.flatMap { $0 })
        #expect(io.stats.mirrors[0].sends.value == 1)
        finish(io)
        #expect(io.sent(to: .mirror(0)) == pieces.flatMap { $0 })
        io.expectQuiescent()
    }

    @Test("enough queued bytes go out at once, without waiting for the delay")
    func bytesThresholdSendsAtOnce() throws {
        let io = try FakeSessionIO(limits: batchLimits(batchBytes: 1_000), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        let first = TestBytes.random(600, seed: 1)
        let second = TestBytes.random(600, seed: 2)
        clientSends(io, [first])
        #expect(!io.hasPending(.send, .mirror(0)))
        clientSends(io, [second])
        let send = try #require(io.pendingOp(.send, .mirror(0)), "1200 queued bytes pass the batch's 1000")
        #expect(send.segments.count == 2 && send.length == 1_200)
        io.completeSend(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == first + second)
        finish(io)
        io.expectQuiescent()
    }

    @Test("short gathered sends: the rest goes out at once, from the right offset, and each slot is let go once sent")
    func shortGatheredSends() throws {
        let io = try FakeSessionIO(limits: batchLimits(), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        let pieces = (0..<4).map { TestBytes.random(500, seed: UInt64(10 + $0)) }
        clientSends(io, pieces)
        io.advanceToNextFlush()
        let send = try #require(io.pendingOp(.send, .mirror(0)))
        #expect(send.segments.count == 4 && send.length == 2_000)
        let slots = send.segments.map(\.slot)
        // 750 bytes: the first chunk and half the second.
        io.completeSend(.mirror(0), count: 750)
        #expect(io.pool.referenceCount(slots[0]) == 0, "a wholly sent chunk's slot is let go")
        #expect(io.pool.referenceCount(slots[1]) == 1)
        let rest = try #require(io.pendingOp(.send, .mirror(0)), "the rest of a short send does not wait for a delay")
        #expect(rest.segments.count == 3 && rest.length == 1_250)
        #expect(rest.segments[0].slot == slots[1] && rest.segments[0].offset == 250 && rest.segments[0].length == 250)
        io.completeSend(.mirror(0), count: 1)
        io.completeSend(.mirror(0), count: 1_000)
        io.completeSend(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == pieces.flatMap { $0 })
        #expect(io.stats.mirrors[0].bytesSent.value == 2_000)
        finish(io)
        io.expectQuiescent()
    }

    @Test("bytes that arrive while a gathered send is in flight wait for their own deadline, then follow in order")
    func bytesDuringSendKeepOrder() throws {
        let io = try FakeSessionIO(limits: batchLimits(), slotCount: 16)
        io.context.nowUs = 5_000
        try #require(io.start() != nil)
        io.connectAll()
        let first = TestBytes.random(400, seed: 3)
        clientSends(io, [first, first])
        io.advanceToNextFlush()
        #expect(io.pendingOp(.send, .mirror(0))?.length == 800)
        let late = TestBytes.random(300, seed: 4)
        let arrivedUs = io.context.nowUs
        clientSends(io, [late])
        io.completeSend(.mirror(0))
        #expect(!io.hasPending(.send, .mirror(0)), "the later bytes have their own delay")
        io.advanceToNextFlush()
        #expect(io.context.nowUs == arrivedUs + 1_000)
        #expect(io.pendingOp(.send, .mirror(0))?.length == 300)
        io.completeSend(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == first + first + late)
        finish(io)
        io.expectQuiescent()
    }

    @Test("the client's EOF sends a waiting batch at once, then SHUT_WR")
    func endOfStreamFlushes() throws {
        let io = try FakeSessionIO(limits: batchLimits(), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        let piece = TestBytes.random(700, seed: 5)
        clientSends(io, [piece])
        #expect(!io.hasPending(.send, .mirror(0)))
        io.completeEOF(.client)
        #expect(io.pendingOp(.send, .mirror(0))?.length == 700, "no wait once the stream ends")
        io.completeSend(.mirror(0))
        #expect(io.hasPending(.shutdown, .mirror(0)))
        finish(io)
        #expect(io.sent(to: .mirror(0)) == piece)
        io.expectQuiescent()
    }

    @Test("a cut while a gathered send is in flight: its chunks stay held until it completes; no hole",
          arguments: [0, 1, 2])
    func cutWhileBatchInFlight(outcome: Int) throws {
        let io = try FakeSessionIO(limits: batchLimits(mirrors: 2, backlogChunksMax: 4), slotCount: 32)
        try #require(io.start() != nil)
        io.connectAll()
        var client: [UInt8] = []
        for index in 0..<3 {
            let piece = TestBytes.random(200, seed: UInt64(20 + index))
            client += piece
            clientSends(io, [piece])
        }
        io.advanceToNextFlush()
        let inFlight = try #require(io.pendingOp(.send, .mirror(0)))
        #expect(inFlight.segments.count == 3)
        io.completeSend(.mirror(1))
        // mirror0 stalls with its batch in flight; 2 more receives overflow its 4 chunks.
        for index in 0..<2 {
            let piece = TestBytes.random(200, seed: UInt64(30 + index))
            client += piece
            clientSends(io, [piece])
            io.flushSends(.mirror(1))
        }
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 1)
        for segment in inFlight.segments {
            #expect(io.pool.referenceCount(segment.slot) >= 1, "a slot the send in flight reads is still held")
        }
        switch outcome {
        case 0: io.completeSend(.mirror(0), count: 450)  // short, then the leg closes
        case 1: io.completeSend(.mirror(0))
        default: io.fail(.send, .mirror(0), errno: ECANCELED)
        }
        io.completeCancelled()
        io.advanceToNextFlush()
        io.completeEOF(.client)
        finish(io)
        let mirror0 = io.sent(to: .mirror(0))
        #expect(mirror0.isPrefix(of: client), "mirror0 never gets a stream with a hole")
        #expect(io.sent(to: .mirror(1)) == client)
        let stats = io.stats.mirrors[0]
        #expect(stats.bytesSent.value + stats.bytesMissed.value == UInt64(client.count))
        io.expectQuiescent()
    }

    @Test("delay 0 never waits: each receive goes at once, and what queued behind a send in flight goes together")
    func zeroDelayGathersOnly() throws {
        let io = try FakeSessionIO(limits: batchLimits(delayUs: 0), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        let pieces = (0..<3).map { TestBytes.random(100, seed: UInt64(40 + $0)) }
        clientSends(io, [pieces[0]], everyUs: 0)
        #expect(io.pendingOp(.send, .mirror(0))?.length == 100)
        clientSends(io, [pieces[1], pieces[2]], everyUs: 0)
        io.completeSend(.mirror(0))
        let second = try #require(io.pendingOp(.send, .mirror(0)))
        #expect(second.segments.count == 2 && second.length == 200)
        io.completeSend(.mirror(0))
        #expect(io.flushRequests.isEmpty)
        finish(io)
        #expect(io.sent(to: .mirror(0)) == pieces.flatMap { $0 })
        io.expectQuiescent()
    }

    @Test("a gathered send takes at most gatherChunksMax chunks; the rest follows at once")
    func gatherLimit() throws {
        let chunks = Session.gatherChunksMax + 5
        let io = try FakeSessionIO(limits: batchLimits(backlogChunksMax: 64), slotCount: 128)
        try #require(io.start() != nil)
        io.connectAll()
        let pieces = (0..<chunks).map { TestBytes.random(10, seed: UInt64(100 + $0)) }
        clientSends(io, pieces, everyUs: 1)
        io.advanceToNextFlush()
        #expect(io.pendingOp(.send, .mirror(0))?.segments.count == Session.gatherChunksMax)
        io.completeSend(.mirror(0))
        #expect(io.pendingOp(.send, .mirror(0))?.segments.count == 5, "the rest was due with the first")
        io.completeSend(.mirror(0))
        finish(io)
        #expect(io.sent(to: .mirror(0)) == pieces.flatMap { $0 })
        io.expectQuiescent()
    }

    @Test("random interleavings, short gathered sends, delays, kept turns and mirror faults keep every promise",
          arguments: 0..<6)
    func randomizedWithBatching(shard: Int) throws {
        var gathered = 0
        var healthyWhole = 0
        for seed in UInt64(5_000 + shard * 12)..<UInt64(5_000 + shard * 12 + 12) {
            var setup = SeededGenerator(seed: seed)
            let mirrorCount = Int.random(in: 1...3, using: &setup)
            let limits = SessionLimits(
                mirrorCount: mirrorCount, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                backlogBytesMax: [6_000, 65_536, 1 << 20].randomElement(using: &setup)!,
                backlogChunksMax: [2, 4, 16, 64].randomElement(using: &setup)!,
                readAheadChunks: Int.random(in: 1...3, using: &setup), mirrorLingerMs: 1_000,
                mirrorFailuresBeforeBackoff: 1_000,
                mirrorBatchBytes: [1, 1_000, 8_000, 65_536].randomElement(using: &setup)!,
                mirrorBatchDelayUs: [0, 50, 1_000].randomElement(using: &setup)!,
                mirrorTurns: [0, 2, 4].randomElement(using: &setup)!,
                mirrorTurnTimeoutUs: [1_000, 250_000].randomElement(using: &setup)!)
            let io = try FakeSessionIO(limits: limits, slotCount: [8, 16, 32].randomElement(using: &setup)!,
                                       sessions: Int.random(in: 1...3, using: &setup))
            let simulation = Simulation(io: io, seed: seed)
            simulation.microsecondsPerStep = 40
            simulation.sessionsToStart = Int.random(in: 1...4, using: &setup)
            simulation.abortOneIn = setup.chance(1, in: 4) ? 60 : 0
            simulation.makeScript = { rng in
                var script = PeerScript()
                script.client = TestBytes.random(Int.random(in: 0...9_000, using: &rng), using: &rng)
                script.main = TestBytes.random(Int.random(in: 0...3_000, using: &rng), using: &rng)
                script.chunkMax = [64, 700, 4_096].randomElement(using: &rng)!
                script.mirrors = (0..<mirrorCount).map { _ in
                    rng.chance(1, in: 2) ? .healthy : MirrorBehavior.all.randomElement(using: &rng)!
                }
                return script
            }
            #expect(simulation.run(), "seed \(seed): stuck; pending \(io.pending)")
            io.expectQuiescent()
            gathered += io.gatheredSends
            var clientBytes = 0
            for key in io.startedKeys {
                let script = try #require(io.scripts[key])
                let ended = try #require(io.ended[key])
                clientBytes += script.client.count
                let aborted = simulation.aborted.contains(key)
                #expect(ended.cause == .completed || (aborted && ended.cause == .aborted), "seed \(seed) \(key)")
                for mirror in 0..<mirrorCount {
                    let stream = io.sent(to: .mirror(mirror), key)
                    #expect(stream.isPrefix(of: script.client), "seed \(seed) \(key) mirror\(mirror): a hole")
                    if !ended.mirrorMissing[mirror] && ended.cause == .completed {
                        #expect(stream == script.client, "seed \(seed) \(key) mirror\(mirror)")
                        if script.behavior(ofMirror: mirror).isHealthy && !stream.isEmpty { healthyWhole += 1 }
                    }
                }
            }
            for mirror in 0..<mirrorCount {
                let stats = io.stats.mirrors[mirror]
                #expect(stats.bytesSent.value + stats.bytesMissed.value == io.stats.bytesClientToMain.value,
                        "seed \(seed): mirror\(mirror) sent + missed == the client's bytes")
            }
        }
        #expect(gathered > 0, "some sends gathered several chunks")
        #expect(healthyWhole > 0)
    }
}
