import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// `--compare` in the session, under the simulated IO: a mirror's replies are
// read into slots and compared with main's; each (session, mirror) gets one
// verdict when the session is over; slots and descriptors keep every promise.

private func compareLimits(mirrors: Int = 1, windowBytes: Int = 4096, backlogChunksMax: Int = 16) -> SessionLimits {
    var limits = SessionLimits(mirrorCount: mirrors, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                               backlogBytesMax: 1 << 20, backlogChunksMax: backlogChunksMax, readAheadChunks: 2,
                               mirrorLingerMs: 2_000, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
    limits.compareWindowBytes = windowBytes
    return limits
}

private extension FakeSessionIO {
    /// The counted verdicts of mirror `index`, by verdict.
    func verdictCounts(_ index: Int = 0) -> [ReplyComparison.Verdict: UInt64] {
        var counts: [ReplyComparison.Verdict: UInt64] = [:]
        for verdict in ReplyComparison.Verdict.allCases {
            let count = stats.mirrors[index].comparisons.count(verdict)
            if count > 0 { counts[verdict] = count }
        }
        return counts
    }

    /// One request and the replies, then both sides close: the client's EOF,
    /// the mirror's reply pieces and EOF, main's reply pieces and EOF.
    func playSession(request: [UInt8], main mainPieces: [[UInt8]], mirror mirrorPieces: [[UInt8]],
                     mirrorFirst: Bool = false) {
        connectAll()
        completeRecv(.client, request)
        flushAllSends()
        // Once a verdict is decided the mirror's replies are discarded, not read.
        func mirrorReplies() {
            for piece in mirrorPieces {
                if hasPending(.recv, .mirror(0)) {
                    completeRecv(.mirror(0), piece)
                } else {
                    completeDiscard(.mirror(0), result: Int32(piece.count))
                }
            }
        }
        if mirrorFirst { mirrorReplies() }
        for piece in mainPieces {
            completeRecv(.main, piece)
            flushAllSends()
        }
        if !mirrorFirst { mirrorReplies() }
        completeEOF(.client)
        flushAllSends()
        completeShutdown(.main)
        completeShutdown(.mirror(0))
        if hasPending(.recv, .mirror(0)) { completeEOF(.mirror(0)) } else { completeDiscard(.mirror(0), result: 0) }
        completeEOF(.main)
        flushAllSends()
        completeShutdown(.client)
    }
}

@Suite("CompareSessionTests")
struct CompareSessionTests {
    @Test("a mirror's replies are received into slots (not discarded) and each slot goes back at once")
    func mirrorRepliesAreReceived() throws {
        let io = try FakeSessionIO(limits: compareLimits())
        try #require(io.start() != nil)
        io.connectAll()
        #expect(io.hasPending(.recv, .mirror(0)))
        #expect(!io.hasPending(.discard, .mirror(0)))
        io.completeRecv(.mirror(0), TestBytes.text("early"))
        #expect(io.pool.inUse == 0, "the mirror's reply slot is recycled once compared")
        #expect(io.stats.mirrors[0].replyBytes.value == 5)
        io.abort()
        io.completeCancelled()
        io.expectQuiescent()
    }

    @Test("a reload that switches --compare off: sessions that start after it get no verdict and their mirror's replies are discarded; on again, they are compared")
    func switchedByReload() throws {
        let io = try FakeSessionIO(limits: compareLimits(), sessions: 1)
        let request = TestBytes.text("GET k\n")
        var off = compareLimits()
        off.compareWindowBytes = 0
        io.context.adopt(off)
        try #require(io.start() != nil)
        io.connectAll()
        #expect(io.hasPending(.discard, .mirror(0)) && !io.hasPending(.recv, .mirror(0)), "replies discarded, not compared")
        io.playSession(request: request, main: [TestBytes.text("A\n")], mirror: [TestBytes.text("B\n")])
        #expect(io.verdictCounts().isEmpty, "no verdict for a session that does not compare")
        io.context.adopt(compareLimits())
        try #require(io.start() != nil)
        io.playSession(request: request, main: [TestBytes.text("A\n")], mirror: [TestBytes.text("B\n")])
        #expect(io.verdictCounts() == [.diverged: 1])
        io.expectQuiescent()
    }

    @Test("each verdict, whichever side replies first, counted once when the session is over",
          arguments: [false, true])
    func verdicts(mirrorFirst: Bool) throws {
        let io = try FakeSessionIO(limits: compareLimits(), sessions: 1)
        let request = TestBytes.text("GET k\n")
        let cases: [(main: [[UInt8]], mirror: [[UInt8]], verdict: ReplyComparison.Verdict)] = [
            ([TestBytes.text("VALUE 1\n")], [TestBytes.text("VAL"), TestBytes.text("UE 1\n")], .match),
            ([TestBytes.text("VALUE 1\n")], [TestBytes.text("VALUE 2\n")], .diverged),
            ([TestBytes.text("VALUE"), TestBytes.text(" 1\n")], [TestBytes.text("VAL")], .shorter),
            ([TestBytes.text("VALUE 1\n")], [TestBytes.text("VALUE 1\n"), TestBytes.text("extra")], .longer),
            ([], [], .match),
        ]
        for (index, testCase) in cases.enumerated() {
            try #require(io.start() != nil)
            let key = try #require(io.lastKey)
            io.playSession(request: request, main: testCase.main, mirror: testCase.mirror, mirrorFirst: mirrorFirst)
            #expect(io.session(key) == nil, "case \(index): the session did not end")
            #expect(io.ended[key]?.cause == .completed)
            #expect(io.ended[key]?.mirrorVerdicts == [testCase.verdict], "case \(index)")
            #expect(io.sent(to: .client, key) == testCase.main.flatMap { $0 }, "the client gets main's reply, never the mirror's")
        }
        #expect(io.verdictCounts() == [.match: 2, .diverged: 1, .shorter: 1, .longer: 1])
        #expect(io.stats.mirrors[0].comparisons.divergenceOffsetBuckets[0] == 1, "VALUE 1 vs VALUE 2 part at offset 6")
        #expect(io.stats.mirrors[0].comparisons.divergenceOffsetSum.value == 6)
        io.expectQuiescent()
    }

    @Test("a mirror whose reply stream resets is incomplete; the session goes on")
    func resetMirrorIsIncomplete() throws {
        let io = try FakeSessionIO(limits: compareLimits(mirrors: 1, backlogChunksMax: 1), sessions: 1)
        try #require(io.start() != nil)
        io.connectAll()
        io.fail(.recv, .mirror(0), errno: ECONNRESET)
        #expect(io.stats.mirrors[0].errors.value == 1)
        io.completeRecv(.client, TestBytes.text("x"))
        io.completeRecv(.main, TestBytes.text("y"))
        io.flushAllSends()
        io.completeEOF(.client)
        io.flushAllSends()
        io.completeShutdown(.main)
        io.completeEOF(.main)
        io.flushAllSends()
        io.completeShutdown(.client)
        io.completeCancelled()
        #expect(io.lastEnded?.mirrorVerdicts == [.incomplete])
        #expect(io.verdictCounts() == [.incomplete: 1])
        io.expectQuiescent()
    }

    @Test("no free slot for a mirror's reply: the pair is given up and the mirror discarded; main is not held up")
    func noSlotForTheMirror() throws {
        let io = try FakeSessionIO(limits: compareLimits(), slotCount: 4, sessions: 1)
        try #require(io.start() != nil)
        io.connectAll()
        // The kernel finds the buffer ring empty for the mirror's receive.
        for slot in io.freeSlots { io.takeFreeSlotForTest(slot) }
        let op = try #require(io.pendingOp(.recv, .mirror(0)))
        io.deliver(op, result: -ENOBUFS)
        for slot in UInt32(0)..<4 { io.recycle(slot: slot) }
        #expect(io.hasPending(.discard, .mirror(0)), "the mirror's replies are discarded from now on")
        #expect(!io.hasPending(.recv, .mirror(0)))
        io.completeDiscard(.mirror(0), result: 100)
        io.completeRecv(.client, TestBytes.text("x"))
        io.completeRecv(.main, TestBytes.text("y"))
        io.flushAllSends()
        io.completeEOF(.client)
        io.flushAllSends()
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeDiscard(.mirror(0), result: 0)
        io.completeEOF(.main)
        io.flushAllSends()
        io.completeShutdown(.client)
        #expect(io.lastEnded?.cause == .completed)
        #expect(io.lastEnded?.mirrorVerdicts == [.incomplete])
        io.expectQuiescent()
    }

    /// The client resets mid-session: main flushes (it gets the client's
    /// bytes and our FIN) and its further replies, which no client reads,
    /// are still compared with the mirror's: the verdict is about the servers.
    @Test("after the client fails, main's further replies are still compared", arguments: [false, true])
    func clientFailureStillCompared(mirrorDiffers: Bool) throws {
        let io = try FakeSessionIO(limits: compareLimits(), sessions: 1)
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, TestBytes.text("req"))
        io.completeRecv(.main, TestBytes.text("first "))
        io.flushAllSends()
        io.fail(.recv, .client, errno: ECONNRESET)
        #expect(io.lastEnded == nil && io.session()?.endCause == .clientError)
        #expect(io.hasPending(.recv, .main), "main's replies are received to be compared, not discarded")
        io.completeRecv(.main, TestBytes.text("second"))
        #expect(io.hasPending(.recv, .main))
        io.completeShutdown(.main)
        io.completeEOF(.main)
        io.completeRecv(.mirror(0), TestBytes.text("first "))
        io.completeRecv(.mirror(0), TestBytes.text(mirrorDiffers ? "SECOND" : "second"))
        io.flushAllSends()
        io.completeShutdown(.mirror(0))
        if io.hasPending(.recv, .mirror(0)) { io.completeEOF(.mirror(0)) } else { io.completeDiscard(.mirror(0), result: 0) }
        io.completeCancelled()
        #expect(io.lastEnded?.cause == .clientError)
        #expect(io.lastEnded?.mirrorVerdicts == [mirrorDiffers ? .diverged : .match])
        io.expectQuiescent()
    }

    @Test("a mirror lingering past its time without EOF is incomplete; a refused one too")
    func noEOFIsIncomplete() throws {
        let io = try FakeSessionIO(limits: compareLimits(mirrors: 2), sessions: 1)
        try #require(io.start() != nil)
        io.completeConnect(.main)
        io.completeConnect(.mirror(0))
        io.completeConnect(.mirror(1), result: -ECONNREFUSED)
        io.completeRecv(.main, TestBytes.text("hello"))
        io.completeRecv(.mirror(0), TestBytes.text("hello"))
        io.flushAllSends()
        io.completeEOF(.client)
        io.flushAllSends()
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeEOF(.main)
        io.flushAllSends()
        io.completeShutdown(.client)
        #expect(io.session() != nil, "mirror 0 lingers")
        io.context.nowMs += 2_001
        io.tickAll()
        io.completeCancelled()
        #expect(io.lastEnded?.mirrorVerdicts == [.incomplete, .incomplete])
        #expect(io.verdictCounts(0) == [.incomplete: 1])
        #expect(io.verdictCounts(1) == [.incomplete: 1])
        io.expectQuiescent()
    }

    @Test("a sampled-out session gets no verdict; the mirror's other sessions do")
    func sampledOutGetsNoVerdict() throws {
        var limits = compareLimits()
        limits.mirrorSampleThresholds = [MirrorSampling.threshold(percent: 50)]
        let io = try FakeSessionIO(limits: limits, sessions: 1, samplingSeed: 3)
        var mirrored = 0
        for _ in 0..<40 {
            try #require(io.start() != nil)
            if io.hasPending(.connect, .mirror(0)) {
                mirrored += 1
                io.playSession(request: TestBytes.text("q"), main: [TestBytes.text("a")], mirror: [TestBytes.text("a")])
            } else {
                io.abort()
                io.completeCancelled()
            }
        }
        #expect(mirrored > 0 && mirrored < 40)
        #expect(io.verdictCounts() == [.match: UInt64(mirrored)])
        #expect(io.stats.mirrors[0].sessionsSampledOut.value == UInt64(40 - mirrored))
        io.expectQuiescent()
    }

    /// Random reply streams (equal, a byte flipped, cut short, extended),
    /// random pieces and interleavings of every operation, short sends, mirror
    /// faults and a small pool (seeded): every (session, mirror) gets exactly
    /// one verdict; a healthy mirror's is the one its streams call for, or
    /// `incomplete` when the pool or the window could not keep it; a faulty
    /// mirror's is never a false match; every promise of the fake holds.
    @Test("seeded simulations: one verdict per (session, mirror), the right one or incomplete", arguments: 0..<6)
    func simulated(shard: Int) throws {
        var exact = 0
        for seed in UInt64(shard * 10)..<UInt64(shard * 10 + 10) {
            var setup = SeededGenerator(seed: seed ^ 0xC0FFEE)
            let mirrorCount = Int.random(in: 1...2, using: &setup)
            let windowBytes = [64, 4096, 65536].randomElement(using: &setup)!
            let limits = compareLimits(mirrors: mirrorCount, windowBytes: windowBytes, backlogChunksMax: 64)
            let io = try FakeSessionIO(limits: limits, slotCount: [8, 32].randomElement(using: &setup)!, sessions: 2)
            let simulation = Simulation(io: io, seed: seed)
            simulation.sessionsToStart = 4
            simulation.makeScript = { rng in
                var script = PeerScript()
                script.client = TestBytes.random(Int.random(in: 1...3_000, using: &rng), using: &rng)
                script.main = TestBytes.random(Int.random(in: 0...6_000, using: &rng), using: &rng)
                script.chunkMax = [1, 100, 1500].randomElement(using: &rng)!
                script.mirrors = (0..<mirrorCount).map { _ in
                    rng.chance(3, in: 4) ? .healthy : [.discardReset, .earlyEOF, .refuse, .stall].randomElement(using: &rng)!
                }
                script.mirrorReplies = (0..<mirrorCount).map { _ in
                    var reply = script.main
                    switch Int.random(in: 0..<4, using: &rng) {
                    case 1 where !reply.isEmpty: reply[Int.random(in: 0..<reply.count, using: &rng)] ^= 1
                    case 2 where !reply.isEmpty: reply.removeLast(Int.random(in: 1...reply.count, using: &rng))
                    case 3: reply += [0x2A]
                    default: break
                    }
                    return reply
                }
                return script
            }
            #expect(simulation.run(), "seed \(seed): stuck; pending \(io.pending)")
            io.expectQuiescent()
            var counted = [UInt64](repeating: 0, count: mirrorCount)
            for key in io.startedKeys {
                let script = try #require(io.scripts[key])
                let ended = try #require(io.ended[key])
                #expect(ended.mirrorVerdicts.count == mirrorCount)
                for mirror in 0..<mirrorCount {
                    counted[mirror] += 1
                    let verdict = ended.mirrorVerdicts[mirror]
                    let reply = script.mirrorReplies[mirror]
                    let main = script.main
                    let common = min(main.count, reply.count)
                    let firstDifference = (0..<common).first { main[$0] != reply[$0] }
                    let expected: ReplyComparison.Verdict = if firstDifference != nil { .diverged }
                        else if main.count == reply.count { .match }
                        else if main.count > reply.count { .shorter } else { .longer }
                    let behavior = script.behavior(ofMirror: mirror)
                    if behavior == .healthy && ended.cause == .completed {
                        #expect(verdict == expected || verdict == .incomplete, "seed \(seed) \(key) mirror \(mirror)")
                        if verdict == expected { exact += 1 }
                    } else if behavior == .earlyEOF {
                        // It replied nothing: a prefix of anything.
                        #expect([.shorter, .match, .incomplete].contains(verdict), "seed \(seed) \(key) mirror \(mirror)")
                    } else if behavior != .healthy {
                        #expect(verdict != .match || main.isEmpty, "seed \(seed) \(key) mirror \(mirror): \(behavior) matched")
                    }
                }
            }
            for mirror in 0..<mirrorCount {
                let total = ReplyComparison.Verdict.allCases.reduce(UInt64(0)) {
                    $0 + io.stats.mirrors[mirror].comparisons.count($1)
                }
                #expect(total == counted[mirror], "seed \(seed): each (session, mirror) counted exactly once")
            }
        }
        #expect(exact > 0, "some healthy pairs got their exact verdict")
    }
}
