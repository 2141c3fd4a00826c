import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Deterministic tests of the session state machine, driven through
// `FakeSessionIO` (see that file). Every byte stream is compared exactly.

private func testLimits(mirrors: Int = 2, backlogBytesMax: Int = 1 << 20, backlogChunksMax: Int = 16,
                        readAheadChunks: Int = 2, lingerMs: Int = 2_000, idleTimeoutMs: Int = 0,
                        failuresBeforeBackoff: Int = 3) -> SessionLimits {
    SessionLimits(mirrorCount: mirrors, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                  backlogBytesMax: backlogBytesMax, backlogChunksMax: backlogChunksMax,
                  readAheadChunks: readAheadChunks, mirrorLingerMs: lingerMs, idleTimeoutMs: idleTimeoutMs,
                  mirrorFailuresBeforeBackoff: failuresBeforeBackoff,
                  mirrorBackoffInitialMs: 250, mirrorBackoffMaxMs: 30_000)
}

/// Plays out whatever is left of the current sessions with healthy peers
/// (no partial sends, no races) and expects them all to end.
private func finish(_ io: FakeSessionIO, seed: UInt64 = 1, sourceLocation: SourceLocation = #_sourceLocation) {
    let simulation = Simulation(io: io, seed: seed)
    simulation.partialSends = false
    simulation.raceCancels = false
    simulation.eofWithBuffer = false
    let done = simulation.run()
    #expect(done, "sessions did not end; pending: \(io.pending)", sourceLocation: sourceLocation)
}

@Suite("SessionTests")
struct SessionTests {
    // MARK: - Start and the data path

    @Test("start opens and connects main then each mirror, with their timeouts, and reads the client")
    func startConnectsEveryLeg() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        let session = try #require(io.start())
        #expect(session.isActive && !session.isEnding)
        let connects = io.requests(.connect)
        #expect(connects.map(\.target) == [0, 1, 2])
        #expect(connects.map(\.peer) == [.main, .mirror(0), .mirror(1)])
        #expect(connects.map(\.timeoutMs) == [1_000, 500, 500])
        #expect(io.hasPending(.recv, .client))
        #expect(!io.hasPending(.recv, .main), "main is read only once it is connected")
        #expect(io.stats.sessionsAccepted.value == 1)
        #expect(io.stats.sessionsActive.value == 1)
        io.connectAll()
        #expect(io.hasPending(.recv, .main))
        #expect(io.hasPending(.drain, .mirror(0)) && io.hasPending(.drain, .mirror(1)))
        #expect(io.stats.mirrors.map { $0.sessionsMirrored.value } == [1, 1])
        finish(io)
        #expect(io.lastEnded?.cause == .completed)
        io.expectQuiescent()
    }

    @Test("a client receive is sent to main before any mirror")
    func mainIsSentFirst() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 3))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, Array("GET /\n".utf8))
        let sends = io.requests(.send)
        #expect(sends.map(\.peer) == [.main, .mirror(0), .mirror(1), .mirror(2)])
        finish(io)
        io.expectQuiescent()
    }

    @Test("client bytes reach main and every mirror in order; main's reach the client; mirrors' never do")
    func bytesFlowBothWays() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        try #require(io.start() != nil)
        io.connectAll()
        var fromClient: [UInt8] = []
        var fromMain: [UInt8] = []
        for round in 0..<6 {
            let up = TestBytes.random(100 + 531 * round, seed: UInt64(round))
            io.completeRecv(.client, up)
            fromClient += up
            io.flushAllSends()
            let down = TestBytes.random(50 + 777 * round, seed: UInt64(100 + round))
            io.completeRecv(.main, down)
            fromMain += down
            io.flushAllSends()
            // Mirror replies are read into scratch memory and thrown away.
            io.completeDrain(.mirror(0), result: 4_096)
            io.completeDrain(.mirror(1), result: 17)
        }
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.sent(to: .mirror(0)) == fromClient)
        #expect(io.sent(to: .mirror(1)) == fromClient)
        #expect(io.sent(to: .client) == fromMain)
        #expect(io.stats.bytesClientToMain.value == UInt64(fromClient.count))
        #expect(io.stats.bytesMainToClient.value == UInt64(fromMain.count))
        #expect(io.stats.mirrors.map { $0.bytesSent.value } == [UInt64(fromClient.count), UInt64(fromClient.count)])
        #expect(io.stats.mirrors.map { $0.bytesMissed.value } == [0, 0])
        // Every client send came from a slot main's recv filled, never from a drain.
        #expect(io.requests(.send, .client).count == 6)
        finish(io)
        #expect(io.sent(to: .client) == fromMain, "no byte reached the client after main's stream")
        io.expectQuiescent()
    }

    @Test("one slot goes to main and every mirror: no copy, one reference per holder")
    func sameSlotToMainAndMirrors() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        try #require(io.start() != nil)
        io.completeConnect(.main)
        io.completeConnect(.mirror(0))
        // mirror1 is still connecting: its backlog holds the slot meanwhile.
        io.completeRecv(.client, TestBytes.text("the same bytes for everyone"))
        let main = try #require(io.pendingOp(.send, .main))
        let mirror0 = try #require(io.pendingOp(.send, .mirror(0)))
        #expect(!io.hasPending(.send, .mirror(1)))
        #expect(main.slot == mirror0.slot)
        #expect(io.pool.referenceCount(main.slot) == 3)
        #expect(io.pool.inUse == 1)
        io.completeConnect(.mirror(1))
        let mirror1 = try #require(io.pendingOp(.send, .mirror(1)))
        #expect(mirror1.slot == main.slot && mirror1.offset == 0 && mirror1.length == main.length)
        io.completeSend(.main)
        #expect(io.pool.referenceCount(main.slot) == 2)
        io.completeSend(.mirror(1))
        #expect(io.pool.referenceCount(main.slot) == 1)
        #expect(!io.freeSlots.contains(main.slot))
        io.completeSend(.mirror(0))
        #expect(io.pool.referenceCount(main.slot) == 0)
        #expect(io.freeSlots.last == main.slot, "the last holder recycles the slot")
        #expect(io.pool.inUse == 0)
        finish(io)
        io.expectQuiescent()
    }

    @Test("a short send re-issues exactly the rest of its chunk")
    func shortSendReissuesTheRest() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.connectAll()
        let bytes = TestBytes.random(1_000, seed: 9)
        io.completeRecv(.client, bytes)
        let first = try #require(io.pendingOp(.send, .main))
        #expect(first.offset == 0 && first.length == 1_000)
        io.completeSend(.main, count: 10)
        let second = try #require(io.pendingOp(.send, .main))
        #expect(second.slot == first.slot && second.offset == 10 && second.length == 990)
        io.completeSend(.main, count: 989)
        let third = try #require(io.pendingOp(.send, .main))
        #expect(third.offset == 999 && third.length == 1)
        io.completeSend(.main)
        #expect(!io.hasPending(.send, .main))
        #expect(io.sent(to: .main) == bytes)
        finish(io)
        io.expectQuiescent()
    }

    @Test("random short sends in any order still deliver every stream exactly, one send in flight per leg",
          arguments: 1...12)
    func shortSendsKeepStreamsExact(seed: Int) throws {
        var rng = SeededGenerator(seed: UInt64(seed))
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        try #require(io.start() != nil)
        io.connectAll()
        var fromClient: [UInt8] = []
        var fromMain: [UInt8] = []
        var partials = 0
        for round in 0..<20 {
            if io.hasPending(.recv, .client), rng.chance(2, in: 3) {
                let bytes = TestBytes.random(Int.random(in: 1...4_096, using: &rng), using: &rng)
                if io.completeRecv(.client, bytes) ?? 0 > 0 { fromClient += bytes }
            }
            if io.hasPending(.recv, .main), rng.chance(2, in: 3) {
                let bytes = TestBytes.random(Int.random(in: 1...4_096, using: &rng), using: &rng)
                if io.completeRecv(.main, bytes) ?? 0 > 0 { fromMain += bytes }
            }
            // Complete a random number of sends, each with a random byte count.
            for _ in 0..<Int.random(in: 0...4, using: &rng) {
                let sends = io.pending.filter { $0.kind == .send }
                guard let op = sends.randomElement(using: &rng) else { break }
                let count = Int.random(in: 1...op.length, using: &rng)
                if count < op.length { partials += 1 }
                io.deliver(op, result: Int32(count))
            }
            let inFlightPerFD = Dictionary(grouping: io.pending.filter { $0.kind == .send }, by: \.fd)
            #expect(inFlightPerFD.values.allSatisfy { $0.count == 1 }, "round \(round)")
        }
        // Drain whatever is left with more partial sends.
        while let op = io.pending.first(where: { $0.kind == .send }) {
            io.deliver(op, result: Int32(Int.random(in: 1...op.length, using: &rng)))
        }
        #expect(partials > 0)
        #expect(!fromClient.isEmpty && !fromMain.isEmpty)
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.sent(to: .mirror(0)) == fromClient)
        #expect(io.sent(to: .mirror(1)) == fromClient)
        #expect(io.sent(to: .client) == fromMain)
        finish(io, seed: UInt64(seed))
        io.expectQuiescent()
    }

    // MARK: - Back-pressure

    @Test("a slow main stops reads from the client after readAheadChunks")
    func slowMainStopsClientReads() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, readAheadChunks: 2))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(100, seed: 1))
        #expect(io.hasPending(.recv, .client), "one chunk queued: still reading")
        io.completeRecv(.client, TestBytes.random(200, seed: 2))
        #expect(!io.hasPending(.recv, .client), "two chunks queued towards main: no more reads")
        // A fast mirror does not lift main's back-pressure.
        io.flushSends(.mirror(0))
        #expect(!io.hasPending(.recv, .client))
        io.completeSend(.main, count: 50)
        #expect(!io.hasPending(.recv, .client), "a short send frees no chunk")
        io.completeSend(.main)
        #expect(io.hasPending(.recv, .client), "a chunk sent: one more read")
        #expect(io.requests(.recv, .client).count == 3)
        io.completeRecv(.client, TestBytes.random(300, seed: 3))
        #expect(!io.hasPending(.recv, .client))
        io.flushAllSends()
        #expect(io.hasPending(.recv, .client))
        #expect(io.sent(to: .main) == TestBytes.random(100, seed: 1) + TestBytes.random(200, seed: 2)
                + TestBytes.random(300, seed: 3))
        finish(io)
        io.expectQuiescent()
    }

    @Test("a slow client stops reads from main after readAheadChunks")
    func slowClientStopsMainReads() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, readAheadChunks: 3))
        try #require(io.start() != nil)
        io.connectAll()
        for index in 0..<3 {
            #expect(io.hasPending(.recv, .main))
            io.completeRecv(.main, TestBytes.random(64, seed: UInt64(index)))
        }
        #expect(!io.hasPending(.recv, .main), "three chunks queued towards the client: no more reads")
        #expect(io.requests(.recv, .main).count == 3)
        io.completeSend(.client)
        #expect(io.hasPending(.recv, .main))
        io.flushSends(.client)
        #expect(io.sent(to: .client) == (0..<3).flatMap { TestBytes.random(64, seed: UInt64($0)) })
        finish(io)
        io.expectQuiescent()
    }

    @Test("while main connects, the client is read only readAheadChunks ahead")
    func connectingMainBoundsClientReads() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, readAheadChunks: 2))
        try #require(io.start() != nil)
        io.completeRecv(.client, TestBytes.text("one"))
        io.completeRecv(.client, TestBytes.text("two"))
        #expect(!io.hasPending(.recv, .client))
        #expect(!io.hasPending(.send, .main), "nothing is sent before the connect completes")
        io.completeConnect(.main)
        io.flushSends(.main)
        #expect(io.sent(to: .main) == TestBytes.text("onetwo"))
        #expect(io.hasPending(.recv, .client))
        finish(io)
        io.expectQuiescent()
    }

    // MARK: - Lagging mirrors

    @Test("a mirror past backlogChunksMax is cut, counted, and gets no later byte")
    func mirrorCutForLagByChunks() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2, backlogChunksMax: 4))
        try #require(io.start() != nil)
        io.connectAll()
        var fromClient: [UInt8] = []
        var sendsToMirror0 = 0
        for index in 0..<10 {
            let bytes = TestBytes.random(100, seed: UInt64(index))
            io.completeRecv(.client, bytes)
            fromClient += bytes
            io.flushSends(.main)
            io.flushSends(.mirror(1))
            if index == 0 {
                // mirror0 takes half of the first chunk, then stalls.
                io.completeSend(.mirror(0), count: 50)
            }
            if index == 3 {
                #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0, "4 chunks fit in its backlog")
                sendsToMirror0 = io.requests(.send, .mirror(0)).count
            }
        }
        let mirror0 = try #require(io.record(.mirror(0)))
        #expect(mirror0.cancelRequested)
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 1)
        #expect(io.requests(.send, .mirror(0)).count == sendsToMirror0, "no send after the cut")
        #expect(mirror0.closeCount == 0, "not closed while its send is in flight")
        io.completeCancelled()
        #expect(io.record(.mirror(0))?.closeCount == 1)
        #expect(io.sent(to: .mirror(0)) == Array(fromClient[..<50]))
        #expect(io.stats.mirrors[0].bytesSent.value == 50)
        #expect(io.stats.mirrors[0].bytesMissed.value == 950, "the rest of the stream is missed")
        #expect(io.sent(to: .mirror(1)) == fromClient)
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.stats.mirrors[1].sessionsCutForLag.value == 0)
        #expect(io.stats.mirrors[1].bytesMissed.value == 0)
        finish(io)
        let ended = try #require(io.lastEnded)
        #expect(ended.cause == .completed)
        #expect(ended.mirrorMissing == [true, false])
        #expect(io.sent(to: .mirror(0)).isPrefix(of: fromClient))
        io.expectQuiescent()
    }

    @Test("a mirror past backlogBytesMax is cut and counted")
    func mirrorCutForLagByBytes() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, backlogBytesMax: 10_000, backlogChunksMax: 64))
        try #require(io.start() != nil)
        io.connectAll()
        var fromClient: [UInt8] = []
        for index in 0..<3 {
            let bytes = TestBytes.random(4_000, seed: UInt64(index))
            io.completeRecv(.client, bytes)
            fromClient += bytes
            io.flushSends(.main)
            #expect(io.stats.mirrors[0].sessionsCutForLag.value == (index < 2 ? 0 : 1), "chunk \(index)")
        }
        #expect(io.stats.mirrors[0].bytesMissed.value == 12_000)
        io.completeCancelled()
        #expect(io.sent(to: .mirror(0)).isEmpty)
        finish(io)
        #expect(io.sent(to: .main) == fromClient)
        io.expectQuiescent()
    }

    @Test("mirrors holding more than half the pool after main let go are cut")
    func mirrorOnlySlotBudget() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, backlogChunksMax: 64), slotCount: 8)
        #expect(io.context.mirrorOnlySlotsMax == 4)
        try #require(io.start() != nil)
        io.connectAll()
        var fromClient: [UInt8] = []
        for index in 0..<4 {
            let bytes = TestBytes.random(100, seed: UInt64(index))
            io.completeRecv(.client, bytes)
            fromClient += bytes
            io.flushSends(.main)
            #expect(io.context.mirrorOnlySlots == index + 1)
        }
        #expect(io.stats.mirrors[0].sessionsCutForPoolShare.value == 0)
        #expect(io.pool.inUse == 4)
        let fifth = TestBytes.random(100, seed: 4)
        io.completeRecv(.client, fifth)
        fromClient += fifth
        io.flushSends(.main)
        // Cut for the pool share, not for its own backlog (which had room).
        #expect(io.stats.mirrors[0].sessionsCutForPoolShare.value == 1)
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0)
        #expect(io.record(.mirror(0))?.cancelRequested == true)
        // Only the chunk its cancelled send still reads is held.
        #expect(io.pool.inUse == 1)
        #expect(io.context.mirrorOnlySlots == 1)
        io.completeCancelled()
        #expect(io.pool.inUse == 0)
        #expect(io.context.mirrorOnlySlots == 0)
        let sixth = TestBytes.random(100, seed: 5)
        io.completeRecv(.client, sixth)
        fromClient += sixth
        io.flushSends(.main)
        #expect(io.stats.mirrors[0].bytesMissed.value == 600)
        finish(io)
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.sent(to: .mirror(0)).isEmpty)
        io.expectQuiescent()
    }

    /// Regression: past the budget, only the mirror with the deepest backlog
    /// is cut; a healthy mirror that happens to have a send in flight is not.
    @Test("past the mirror-only budget, only the laggiest mirror is cut")
    func mirrorOnlySlotBudgetCutsTheLaggiest() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2, backlogChunksMax: 64), slotCount: 8)
        try #require(io.start() != nil)
        io.connectAll()
        var fromClient: [UInt8] = []
        for index in 0..<5 {
            let bytes = TestBytes.random(100, seed: UInt64(10 + index))
            io.completeRecv(.client, bytes)
            fromClient += bytes
            io.flushSends(.main)
            // mirror1 keeps up, but always has its latest chunk in flight.
            if index < 4 { io.flushSends(.mirror(1)) }
        }
        #expect(io.stats.mirrors[0].sessionsCutForPoolShare.value == 1, "mirror0 took nothing")
        #expect(io.stats.mirrors[1].sessionsCutForPoolShare.value == 0, "mirror1 is only one chunk behind")
        #expect(io.record(.mirror(1))?.cancelRequested == false)
        io.completeCancelled()
        io.flushSends(.mirror(1))
        finish(io)
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.sent(to: .mirror(1)) == fromClient)
        io.expectQuiescent()
    }

    // MARK: - Mirror failures never touch the client

    @Test("a refused mirror is counted and dropped; the session goes on and completes")
    func mirrorConnectRefused() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        try #require(io.start() != nil)
        io.completeConnect(.main)
        let early = TestBytes.random(300, seed: 1)
        io.completeRecv(.client, early)
        #expect(io.pool.referenceCount(try #require(io.pendingOp(.send, .main)).slot) == 3)
        io.completeConnect(.mirror(0), result: -ECONNREFUSED)
        #expect(io.record(.mirror(0))?.closeCount == 1, "nothing in flight: closed at once")
        #expect(io.pool.referenceCount(try #require(io.pendingOp(.send, .main)).slot) == 2)
        io.completeConnect(.mirror(1))
        io.flushAllSends()
        let late = TestBytes.random(500, seed: 2)
        io.completeRecv(.client, late)
        io.flushAllSends()
        #expect(io.stats.mirrors[0].connectFailures.value == 1)
        #expect(io.stats.mirrors[0].connectTimeouts.value == 0)
        #expect(io.stats.mirrors[0].bytesMissed.value == 800)
        #expect(io.stats.mirrors[0].sessionsMirrored.value == 0)
        #expect(io.requests(.send, .mirror(0)).isEmpty)
        finish(io)
        #expect(io.lastEnded?.cause == .completed)
        #expect(io.sent(to: .main) == early + late)
        #expect(io.sent(to: .mirror(1)) == early + late)
        io.expectQuiescent()
    }

    @Test("a mirror connect cut by its linked timeout (-ECANCELED) counts as a timeout")
    func mirrorConnectTimeout() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.completeConnect(.main)
        io.completeConnect(.mirror(0), result: -ECANCELED)
        #expect(io.stats.mirrors[0].connectTimeouts.value == 1)
        #expect(io.stats.mirrors[0].connectFailures.value == 0)
        #expect(io.record(.mirror(0))?.closeCount == 1)
        io.completeRecv(.client, TestBytes.text("still served"))
        io.flushAllSends()
        io.completeRecv(.main, TestBytes.text("reply"))
        io.flushAllSends()
        finish(io)
        #expect(io.sent(to: .main) == TestBytes.text("still served"))
        #expect(io.sent(to: .client) == TestBytes.text("reply"))
        #expect(io.lastEnded?.cause == .completed)
        io.expectQuiescent()
    }

    @Test("a mirror that resets mid-stream is cut with a prefix; the client goes on", arguments: [ECONNRESET, EPIPE, EAGAIN])
    func mirrorResetMidStream(errno code: Int32) throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        try #require(io.start() != nil)
        io.connectAll()
        let first = TestBytes.random(700, seed: 1)
        io.completeRecv(.client, first)
        io.flushAllSends()
        let second = TestBytes.random(900, seed: 2)
        io.completeRecv(.client, second)
        io.completeSend(.mirror(0), count: 100)
        io.fail(.send, .mirror(0), errno: code)
        #expect(io.stats.mirrors[0].errors.value == 1)
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0)
        #expect(io.record(.mirror(0))?.cancelRequested == true, "its drain is still in flight")
        io.completeCancelled()
        #expect(io.record(.mirror(0))?.closeCount == 1)
        io.flushAllSends()
        let third = TestBytes.random(300, seed: 3)
        io.completeRecv(.client, third)
        io.flushAllSends()
        finish(io)
        #expect(io.sent(to: .mirror(0)) == first + second[..<100])
        #expect(io.stats.mirrors[0].bytesMissed.value == 800 + 300)
        #expect(io.sent(to: .main) == first + second + third)
        #expect(io.sent(to: .mirror(1)) == first + second + third)
        #expect(io.lastEnded?.cause == .completed)
        io.expectQuiescent()
    }

    @Test("a mirror whose reply stream resets is cut; the client goes on")
    func mirrorDrainReset() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeDrain(.mirror(0), result: -ECONNRESET)
        #expect(io.stats.mirrors[0].errors.value == 1)
        #expect(io.record(.mirror(0))?.closeCount == 1)
        io.completeRecv(.client, TestBytes.text("abc"))
        io.flushAllSends()
        #expect(io.stats.mirrors[0].bytesMissed.value == 3)
        finish(io)
        #expect(io.sent(to: .main) == TestBytes.text("abc"))
        #expect(io.lastEnded?.cause == .completed)
        io.expectQuiescent()
    }

    @Test("a mirror that sends EOF early still gets the whole stream, then is closed after our shutdown")
    func mirrorEarlyEOF() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeDrain(.mirror(0), result: 0)
        #expect(!io.hasPending(.drain, .mirror(0)), "no read after its EOF")
        var fromClient: [UInt8] = []
        for index in 0..<3 {
            let bytes = TestBytes.random(1_000, seed: UInt64(index))
            io.completeRecv(.client, bytes)
            fromClient += bytes
            io.flushAllSends()
        }
        io.completeEOF(.client)
        io.completeShutdown(.main)
        #expect(io.record(.mirror(0))?.closeCount == 0)
        io.completeShutdown(.mirror(0))
        #expect(io.record(.mirror(0))?.closeCount == 1, "both directions done: closed")
        finish(io)
        #expect(io.sent(to: .mirror(0)) == fromClient)
        #expect(io.lastEnded?.mirrorMissing == [false])
        io.expectQuiescent()
    }

    @Test("a mirror whose socket cannot be opened is skipped for the session")
    func mirrorOpenSocketFailure() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        io.openFailures[1] = EMFILE
        try #require(io.start() != nil)
        #expect(io.requests(.connect).map(\.target) == [0, 2])
        #expect(io.stats.mirrors[0].connectFailures.value == 1)
        io.connectAll()
        io.completeRecv(.client, TestBytes.text("hello"))
        io.flushAllSends()
        finish(io)
        #expect(io.sent(to: .mirror(1)) == TestBytes.text("hello"))
        #expect(io.stats.mirrors[0].bytesMissed.value == 5)
        #expect(io.lastEnded?.mirrorMissing == [true, false])
        io.expectQuiescent()
    }

    @Test("after 3 failed connects in a row a mirror backs off; sessions skip it; a success resets it")
    func mirrorBackoff() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, failuresBeforeBackoff: 3))
        io.context.nowMs = 10_000
        func failingSession() {
            io.start()
            io.completeConnect(.main)
            io.completeConnect(.mirror(0), result: -ECONNREFUSED)
            finish(io)
        }
        failingSession()
        failingSession()
        #expect(io.context.mirrorIsTried(0), "two failures: still tried")
        failingSession()
        #expect(!io.context.mirrorIsTried(0), "three failures: backing off")
        #expect(io.context.mirrorIsBackingOff(0))
        #expect(io.stats.mirrors[0].connectFailures.value == 3)

        // A session while backing off does not try the mirror and counts the skip.
        io.start()
        #expect(io.requests(.connect).map(\.target) == [0])
        #expect(io.stats.mirrors[0].sessionsSkipped.value == 1)
        io.completeConnect(.main)
        io.completeRecv(.client, TestBytes.text("skipped"))
        finish(io)
        #expect(io.stats.mirrors[0].bytesMissed.value == 7)
        #expect(io.lastEnded?.mirrorMissing == [true])

        // The rest is the initial back-off (250 ms); then the next session probes it.
        io.context.nowMs += 249
        #expect(!io.context.mirrorIsTried(0))
        io.context.nowMs += 1
        #expect(io.context.mirrorIsTried(0))
        io.start()
        #expect(io.requests(.connect).map(\.target) == [0, 1])
        io.connectAll()
        finish(io)
        #expect(io.stats.mirrors[0].sessionsMirrored.value == 1)

        // The success reset the count: two more failures do not back off, a third does.
        failingSession()
        failingSession()
        #expect(io.context.mirrorIsTried(0))
        failingSession()
        #expect(!io.context.mirrorIsTried(0))
        // A failed probe after the rest doubles it (250 -> 500 ms).
        io.context.nowMs += 250
        failingSession()
        let failedAt = io.context.nowMs
        io.context.nowMs = failedAt + 499
        #expect(io.context.mirrorIsBackingOff(0))
        io.context.nowMs = failedAt + 500
        #expect(!io.context.mirrorIsBackingOff(0))
        #expect(io.stats.mirrors[0].sessionsSkipped.value == 1)
        io.expectQuiescent()
    }

    // MARK: - Half-close

    @Test("client EOF becomes shutdown towards main and mirrors once their queues are sent; main still replies")
    func halfCloseFromTheClient() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(300, seed: 1)
        io.completeRecv(.client, request)
        io.completeSend(.mirror(0))
        io.completeEOF(.client)
        #expect(!io.hasPending(.recv, .client), "no read after the client's EOF")
        #expect(io.hasPending(.send, .main) && !io.hasPending(.shutdown, .main), "main's queue first")
        #expect(io.hasPending(.shutdown, .mirror(0)), "mirror0 has its bytes: shut at once")
        #expect(!io.hasPending(.shutdown, .mirror(1)))
        io.completeSend(.main, count: 100)
        #expect(!io.hasPending(.shutdown, .main))
        io.completeSend(.main)
        #expect(io.hasPending(.shutdown, .main))
        io.completeSend(.mirror(1))
        #expect(io.hasPending(.shutdown, .mirror(1)))
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeShutdown(.mirror(1))
        #expect(session.isActive && !session.isEnding, "main's direction is still open")

        // Main's reply after the client's EOF still reaches the client.
        let reply = TestBytes.random(2_000, seed: 2)
        io.completeRecv(.main, reply)
        io.completeEOF(.main)
        #expect(!io.hasPending(.shutdown, .client), "the client's queue first")
        io.completeSend(.client)
        #expect(io.hasPending(.shutdown, .client))
        #expect(!session.isEnding)
        io.completeShutdown(.client)
        #expect(session.isEnding)
        #expect(session.endCause == .completed)
        #expect(io.stats.sessionsCompleted.value == 1)
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.record(.main)?.closeCount == 1)
        // Mirrors are closed when they too are done (their EOF after our shutdown).
        #expect(session.isActive)
        #expect(io.record(.mirror(0))?.closeCount == 0)
        io.completeDrain(.mirror(0), result: 0)
        #expect(io.record(.mirror(0))?.closeCount == 1)
        io.completeDrain(.mirror(1), result: 0)
        #expect(!session.isActive)
        #expect(io.sent(to: .main) == request)
        #expect(io.sent(to: .mirror(0)) == request)
        #expect(io.sent(to: .mirror(1)) == request)
        #expect(io.sent(to: .client) == reply)
        #expect(io.stats.sessionsActive.value == 0)
        io.expectQuiescent()
    }

    @Test("main EOF first: the client is shut after its queue; the client's later bytes still reach main")
    func halfCloseFromMain() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.connectAll()
        let greeting = TestBytes.text("220 ready\r\n")
        io.completeRecv(.main, greeting)
        io.completeEOF(.main, withBuffer: true)
        #expect(!io.hasPending(.recv, .main))
        #expect(!io.hasPending(.shutdown, .client))
        io.completeSend(.client)
        #expect(io.hasPending(.shutdown, .client))
        io.completeShutdown(.client)
        #expect(!session.isEnding)
        var fromClient: [UInt8] = []
        for index in 0..<4 {
            let bytes = TestBytes.random(1_500, seed: UInt64(index))
            io.completeRecv(.client, bytes)
            fromClient += bytes
            io.flushAllSends()
        }
        io.completeEOF(.client)
        io.completeShutdown(.main)
        #expect(session.endCause == .completed)
        finish(io)
        #expect(io.sent(to: .client) == greeting)
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.sent(to: .mirror(0)) == fromClient)
        io.expectQuiescent()
    }

    @Test("an EOF completion that names a slot gives the slot back")
    func eofWithSelectedBufferRecyclesIt() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        try #require(io.start() != nil)
        io.connectAll()
        let before = io.recycleCount
        io.completeEOF(.client, withBuffer: true)
        #expect(io.recycleCount == before + 1)
        #expect(io.pool.inUse == 0)
        finish(io)
        io.expectQuiescent()
    }

    // MARK: - Main and client failures

    @Test("main refused: the client is closed at once (after its recv is cancelled)")
    func mainConnectRefused() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.completeConnect(.mirror(0))
        let early = TestBytes.text("sent before main failed")
        io.completeRecv(.client, early)
        io.completeConnect(.main, result: -ECONNREFUSED)
        #expect(session.endCause == .mainConnectFailure)
        #expect(io.stats.sessionsEndedByMainConnectFailure.value == 1)
        #expect(io.record(.main)?.closeCount == 1)
        #expect(io.record(.client)?.cancelRequested == true)
        #expect(io.record(.client)?.closeCount == 0, "its recv is still in flight")
        io.completeCancelled()
        #expect(io.record(.client)?.closeCount == 1)
        finish(io)
        #expect(io.sent(to: .main).isEmpty)
        #expect(io.sent(to: .client).isEmpty)
        #expect(io.sent(to: .mirror(0)).isPrefix(of: early))
        io.expectQuiescent()
    }

    @Test("main's connect timing out ends the session as a main connect failure")
    func mainConnectTimeout() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        let session = try #require(io.start())
        io.completeConnect(.main, result: -ECANCELED)
        #expect(session.endCause == .mainConnectFailure)
        io.completeCancelled()
        #expect(!session.isActive)
        io.expectQuiescent()
    }

    @Test("main's socket failing to open ends a session without mirrors at once")
    func mainOpenSocketFailureWithoutMirrors() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        io.openFailures[0] = EMFILE
        let session = try #require(io.start())
        #expect(session.endCause == .mainConnectFailure)
        #expect(!session.isActive)
        #expect(io.record(.client)?.closeCount == 1)
        io.expectQuiescent()
    }

    /// Regression: when main's socket cannot be opened (EMFILE under load),
    /// `start` fails before it reaches the mirrors, whose legs are still
    /// idle; the session must still end at once, or it leaks a table slot.
    @Test("main's socket failing to open ends a session that has mirrors")
    func mainOpenSocketFailureWithMirrors() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        io.openFailures[0] = EMFILE
        let session = try #require(io.start())
        #expect(session.endCause == .mainConnectFailure)
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.requests(.connect).isEmpty)
        #expect(!session.isActive, "the session must end with idle mirror legs")
        io.context.nowMs += 60_000
        io.tickAll()
        if session.isActive { session.abort(io: io) }
        #expect(!session.isActive, "neither tick nor abort was needed")
        #expect(io.stats.sessionsActive.value == 0)
    }

    @Test("main resets mid-reply: mainError, the client is closed", arguments: [OperationKind.recv, .send])
    func mainResetMidReply(kind: OperationKind) throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(200, seed: 1)
        io.completeRecv(.client, request)
        if kind == .recv {
            io.flushAllSends()
            let reply = TestBytes.random(900, seed: 2)
            io.completeRecv(.main, reply)
            io.completeSend(.client, count: 300)
            io.fail(.recv, .main, errno: ECONNRESET)
            #expect(io.record(.client)?.cancelRequested == true, "its send is in flight")
            #expect(io.record(.main)?.closeCount == 1)
        } else {
            io.fail(.send, .main, errno: ECONNRESET)
            #expect(io.record(.main)?.cancelRequested == true, "its recv is in flight")
        }
        #expect(session.endCause == .mainError)
        #expect(io.stats.sessionsEndedByMainError.value == 1)
        io.completeCancelled()
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.record(.main)?.closeCount == 1)
        finish(io)
        if kind == .recv {
            #expect(io.sent(to: .client) == Array(TestBytes.random(900, seed: 2)[..<300]))
        }
        #expect(io.sent(to: .mirror(0)) == request, "mirrors flush what they have")
        io.expectQuiescent()
    }

    @Test("client resets: clientError, the client is closed, main gets what the client sent, then FIN, and is closed",
          arguments: [OperationKind.recv, .send])
    func clientReset(kind: OperationKind) throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.connectAll()
        // Main has not taken the client's bytes yet when the client fails.
        let request = TestBytes.random(300, seed: 3)
        io.completeRecv(.client, request)
        if kind == .recv {
            io.fail(.recv, .client, errno: ECONNRESET)
        } else {
            io.completeRecv(.main, TestBytes.text("reply"))
            io.fail(.send, .client, errno: EPIPE)
        }
        #expect(session.endCause == .clientError)
        #expect(io.stats.sessionsEndedByClientError.value == 1)
        io.completeCancelled()
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.record(.main)?.closeCount == 0, "main flushes first")
        io.flushSends(.main)
        #expect(io.sent(to: .main) == request, "main got every byte the client sent")
        io.completeShutdown(.main)
        // Main's reply to it is drained, then its EOF closes it.
        if io.hasPending(.recv, .main) { io.completeEOF(.main) } else { io.completeDrain(.main, result: 0) }
        #expect(io.record(.main)?.closeCount == 1)
        finish(io)
        #expect(io.sent(to: .mirror(0)) == request)
        io.expectQuiescent()
    }

    // MARK: - Abort, linger, stale completions, dry pool

    @Test("abort closes every leg, after cancelling what is in flight")
    func abortClosesEveryLeg() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        let session = try #require(io.start())
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(100, seed: 1))
        io.abort()
        #expect(session.endCause == .aborted)
        #expect(io.stats.sessionsAborted.value == 1)
        for peer in [Peer.client, .main, .mirror(0), .mirror(1)] {
            #expect(io.record(peer)?.cancelRequested == true, "\(peer)")
            #expect(io.record(peer)?.closeCount == 0, "\(peer) has operations in flight")
        }
        io.completeCancelled()
        #expect(!session.isActive)
        io.expectQuiescent()
    }

    @Test("abort while connecting cancels the connects without counting mirror failures")
    func abortWhileConnecting() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.abort()
        io.completeCancelled()
        #expect(!session.isActive)
        #expect(io.stats.mirrors[0].connectTimeouts.value == 0)
        #expect(io.stats.mirrors[0].connectFailures.value == 0)
        #expect(io.context.mirrorIsTried(0))
        io.expectQuiescent()
    }

    @Test("mirrors still flushing after the session completed are closed by tick after mirrorLingerMs")
    func mirrorLinger() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2, lingerMs: 2_000))
        io.context.nowMs = 1_000
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(800, seed: 1)
        io.completeRecv(.client, request)
        io.flushSends(.main)
        io.flushSends(.mirror(0))
        // mirror1 never completes its send; mirror0 never sends its EOF.
        io.completeEOF(.client)
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeRecv(.main, TestBytes.text("ok"))
        io.completeEOF(.main)
        io.flushSends(.client)
        io.completeShutdown(.client)
        #expect(session.endCause == .completed)
        #expect(session.isActive && session.isEnding)
        io.context.nowMs = 2_999
        io.tickAll()
        #expect(io.record(.mirror(0))?.cancelRequested == false)
        #expect(io.record(.mirror(1))?.cancelRequested == false)
        io.context.nowMs = 3_000
        io.tickAll()
        #expect(io.record(.mirror(0))?.cancelRequested == true)
        #expect(io.record(.mirror(1))?.cancelRequested == true)
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0, "mirror0 had all its bytes")
        #expect(io.stats.mirrors[1].sessionsCutForLag.value == 1, "mirror1 still had a backlog")
        #expect(io.stats.mirrors[1].bytesMissed.value == 800)
        io.completeCancelled()
        #expect(!session.isActive)
        #expect(io.sent(to: .mirror(0)) == request)
        #expect(io.sent(to: .mirror(1)).isEmpty)
        // mirror1 lost bytes; mirror0 got its whole stream (the linger only ended its wait for EOF).
        #expect(io.lastEnded?.mirrorMissing == [false, true])
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        #expect(io.stats.mirrors[0].bytesSent.value == 800)
        io.expectQuiescent()
    }

    /// No session lives forever: when no byte moved between client and main
    /// for the idle timeout, the session ends (counted); a mirror's traffic
    /// does not keep it alive, and mirrors still get their bytes and linger.
    @Test("a session idle between client and main for idleTimeoutMs ends; mirror traffic does not count")
    func idleTimeout() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, idleTimeoutMs: 5_000))
        io.context.nowMs = 1_000
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(300, seed: 7)
        io.completeRecv(.client, request)
        io.flushSends(.main)
        io.context.nowMs = 5_000
        io.completeRecv(.main, TestBytes.text("reply"))
        io.flushSends(.client)
        io.context.nowMs = 9_000
        io.completeDrain(.mirror(0), result: 100)
        io.context.nowMs = 9_999
        io.checkIdleAll()
        #expect(!session.isEnding, "4999 ms since the reply")
        io.context.nowMs = 10_000
        io.checkIdleAll()
        #expect(session.isEnding)
        #expect(session.endCause == .idleTimeout)
        #expect(io.stats.sessionsEndedByIdleTimeout.value == 1)
        // The mirror, its send still queued, flushes and shuts down as after any end.
        io.flushSends(.mirror(0))
        #expect(io.hasPending(.shutdown, .mirror(0)))
        finish(io)
        #expect(!session.isActive)
        #expect(io.sent(to: .mirror(0)) == request)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        io.expectQuiescent()
    }

    @Test("idleTimeoutMs 0 never ends a session")
    func idleTimeoutOff() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, idleTimeoutMs: 0))
        let session = try #require(io.start())
        io.connectAll()
        io.context.nowMs = 1 << 40
        io.checkIdleAll()
        #expect(!session.isEnding)
        finish(io)
        io.expectQuiescent()
    }

    /// Our backlog was empty, but the kernel still held bytes the mirror had
    /// not acknowledged when the linger ended: it did not keep up either.
    @Test("a mirror whose kernel still holds unacknowledged bytes when its linger ends is cut for lag")
    func lingerEndsWithUnacknowledgedBytes() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2, lingerMs: 2_000))
        io.context.nowMs = 1_000
        let session = try #require(io.start())
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(800, seed: 2))
        io.flushSends(.main)
        io.flushSends(.mirror(0))
        io.flushSends(.mirror(1))
        io.completeEOF(.client)
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeShutdown(.mirror(1))
        io.completeEOF(.main)
        io.completeShutdown(.client)
        #expect(session.isEnding && session.isActive, "both mirrors are yet to send their EOF")
        // Mirror 0 has acknowledged everything; 300 bytes wait in mirror 1's kernel send queue.
        io.unacknowledgedBytes[try #require(io.record(.mirror(1))).fd] = 300
        io.context.nowMs = 3_000
        io.tickAll()
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        #expect(io.stats.mirrors[1].sessionsCutForLag.value == 1)
        #expect(io.stats.mirrors[1].bytesMissed.value == 300)
        io.completeCancelled()
        #expect(!session.isActive)
        #expect(io.lastEnded?.mirrorMissing == [false, true])
        io.expectQuiescent()
    }

    @Test("a completion for an ended session's tag is recognised as stale, even after the slot is reused")
    func staleCompletions() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1), sessions: 2)
        let first = try #require(io.start())
        let firstKey = SessionKey(first)
        io.connectAll()
        let oldRecv = try #require(io.pendingOp(.recv, .client)).tag
        let oldSend = CompletionTag(kind: OperationKind.send.rawValue, endpoint: 1,
                                    generation: firstKey.generation, slot: firstKey.index)
        finish(io)
        #expect(!first.isActive)
        #expect(io.table.session(for: oldRecv) == nil, "ended, not yet reused")

        let second = try #require(io.start())
        #expect(second === first, "the table reuses the slot")
        #expect(second.generation == firstKey.generation &+ 1)
        io.connectAll()
        let newRecv = try #require(io.pendingOp(.recv, .client)).tag
        #expect(newRecv.slot == oldRecv.slot && newRecv.generation != oldRecv.generation)
        #expect(io.table.session(for: newRecv) === second)
        #expect(io.table.session(for: oldRecv) == nil)
        #expect(io.table.session(for: oldSend) == nil)
        let beyond = CompletionTag(kind: OperationKind.recv.rawValue, endpoint: 0, generation: newRecv.generation,
                                   slot: UInt32(io.table.capacity))
        #expect(io.table.session(for: beyond) == nil)

        // A late completion of the old recv that took a slot: the slot goes straight back.
        let requestsBefore = io.requests.count
        let slot = try #require(io.freeSlots.last)
        io.takeFreeSlotForTest(slot)
        io.dispatch(tag: oldRecv, result: 512, selectedBuffer: slot)
        io.dispatch(tag: oldSend, result: 100, selectedBuffer: nil)
        #expect(io.staleCompletions == 2)
        #expect(io.freeSlots.contains(slot))
        #expect(io.requests.count == requestsBefore, "the new session did nothing")
        #expect(io.hasPending(.recv, .client), "the new session's recv is untouched")
        #expect(io.stats.bytesClientToMain.value == 0)
        finish(io)
        io.expectQuiescent()
    }

    @Test("a dry pool: recv gets ENOBUFS, the session waits, resumes, and loses no byte")
    func dryPool() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, readAheadChunks: 2), slotCount: 2)
        let session = try #require(io.start())
        io.connectAll()
        let one = TestBytes.random(100, seed: 1)
        let two = TestBytes.random(200, seed: 2)
        io.completeRecv(.client, one)
        io.completeRecv(.client, two)
        #expect(io.freeSlots.isEmpty)
        let reply = TestBytes.random(300, seed: 3)
        #expect(io.completeRecv(.main, reply) == -ENOBUFS)
        #expect(session.waitingForBuffers)
        #expect(io.waiters == [session.index])
        #expect(io.stats.poolExhausted.value == 1)
        #expect(!io.hasPending(.recv, .main))
        io.completeSend(.main)
        #expect(io.freeSlots.count == 1)
        #expect(!io.hasPending(.recv, .client), "no read while waiting for slots")
        io.resumeWaiters()
        #expect(!session.waitingForBuffers)
        #expect(io.hasPending(.recv, .main) && io.hasPending(.recv, .client))
        #expect(io.completeRecv(.main, reply) == 300)
        io.flushAllSends()
        finish(io)
        #expect(io.sent(to: .main) == one + two)
        #expect(io.sent(to: .client) == reply)
        io.expectQuiescent()
    }

    @Test("session table: take, free and capacity")
    func sessionTable() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1), sessions: 3)
        #expect(io.table.capacity == 3 && io.table.freeCount == 3)
        let sessions = (0..<3).compactMap { _ in io.start() }
        #expect(sessions.count == 3)
        #expect(Set(sessions.map(\.index)) == [0, 1, 2])
        #expect(io.table.activeCount == 3)
        #expect(io.start() == nil, "the table is full")
        finish(io)
        #expect(io.table.activeCount == 0 && io.table.freeCount == 3)
        #expect(io.stats.sessionsCompleted.value == 3)
        io.expectQuiescent()
    }

    /// Regression: a session whose client and main receives both find the
    /// pool dry must ask to be resumed once. The worker's waiter ring holds
    /// one entry per session; duplicates would fill it, later requests would
    /// be dropped, and a dropped session would never be resumed.
    @Test("one wait for slots asks waitForBuffers once, even when both receives find the pool dry")
    func waitForBuffersOncePerWait() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, readAheadChunks: 2), slotCount: 2, sessions: 2)
        // Another session holds both slots (its main does not take its bytes yet).
        let holder = try #require(io.start())
        let holderKey = SessionKey(holder)
        io.connectAll(holderKey)
        io.completeRecv(.client, TestBytes.text("a"), holderKey)
        io.completeRecv(.client, TestBytes.text("b"), holderKey)
        #expect(io.freeSlots.isEmpty)
        let session = try #require(io.start())
        io.connectAll()
        #expect(io.completeRecv(.client, TestBytes.text("c")) == -ENOBUFS)
        #expect(io.completeRecv(.main, TestBytes.text("d")) == -ENOBUFS)
        #expect(session.waitingForBuffers)
        #expect(io.stats.poolExhausted.value == 2)
        #expect(io.waitForBuffersCalls == 1, "asked \(io.waitForBuffersCalls) times for one wait")
        #expect(io.waiters == [session.index], "waiters \(io.waiters)")
        io.flushAllSends(holderKey)
        io.resumeWaiters()
        #expect(io.completeRecv(.client, TestBytes.text("c")) == 1)
        #expect(io.completeRecv(.main, TestBytes.text("d")) == 1)
        finish(io)
        #expect(io.sent(to: .main) == TestBytes.text("c"))
        #expect(io.sent(to: .client) == TestBytes.text("d"))
        io.expectQuiescent()
    }

    /// Regression: `abort` drops a mirror's queued bytes; they count as
    /// missed, so bytes sent plus missed always equal the client's bytes.
    @Test("abort counts a mirror's dropped backlog as missed")
    func abortCountsDroppedBacklog() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(100, seed: 1))
        io.flushSends(.main)
        io.completeRecv(.client, TestBytes.random(200, seed: 2))
        io.flushSends(.main)
        // The mirror took nothing yet: 300 bytes in its backlog.
        io.abort()
        io.completeCancelled()
        #expect(io.sent(to: .mirror(0)).isEmpty)
        let stats = io.stats.mirrors[0]
        #expect(stats.bytesSent.value + stats.bytesMissed.value == 300,
                "sent \(stats.bytesSent.value) + missed \(stats.bytesMissed.value) of 300 client bytes")
        io.expectQuiescent()
    }

    // MARK: - Errors at every stage

    private static let faults: [(OperationKind, Peer, Int32, Session.EndCause)] = [
        (.recv, .client, ECONNRESET, .clientError),
        (.send, .client, EPIPE, .clientError),
        (.shutdown, .client, ENOTCONN, .completed),
        (.connect, .main, ECONNREFUSED, .mainConnectFailure),
        (.connect, .main, ECANCELED, .mainConnectFailure),
        (.recv, .main, ECONNRESET, .mainError),
        (.send, .main, ECONNRESET, .mainError),
        (.shutdown, .main, ENOTCONN, .completed),
        (.connect, .mirror(0), ECONNREFUSED, .completed),
        (.connect, .mirror(0), ECANCELED, .completed),
        (.send, .mirror(0), EPIPE, .completed),
        (.send, .mirror(0), EAGAIN, .completed),
        (.drain, .mirror(0), ECONNRESET, .completed),
        (.shutdown, .mirror(0), ENOTCONN, .completed),
    ]

    @Test("a failure injected at the Nth operation of each kind on each leg keeps every invariant",
          arguments: 0..<14)
    func faultAtEveryStage(faultIndex: Int) throws {
        let (kind, peer, code, expectedCause) = Self.faults[faultIndex]
        var fired = 0
        for nth in 0..<40 {
            var firedThisRound = 0
            for seed in 1...3 {
                let io = try FakeSessionIO(limits: testLimits(mirrors: 2), slotCount: 64)
                let simulation = Simulation(io: io, seed: UInt64(nth * 10 + seed))
                simulation.plan = FaultPlan(kind: kind, peer: peer, nth: nth, result: -code)
                var script = PeerScript()
                script.client = TestBytes.random(3_000, seed: UInt64(seed))
                script.main = TestBytes.random(2_000, seed: UInt64(seed + 50))
                script.chunkMax = 700
                simulation.start(script)
                let key = try #require(io.lastKey)
                let done = simulation.run()
                #expect(done, "stuck: \(simulation.plan!) seed \(seed); pending \(io.pending)")
                io.expectQuiescent()
                let ended = try #require(io.ended[key])
                guard simulation.plan!.fired else {
                    #expect(ended.cause == .completed)
                    continue
                }
                fired += 1
                firedThisRound += 1
                #expect(ended.cause == expectedCause, "\(simulation.plan!) seed \(seed)")
                let toMain = io.sent(to: .main)
                let toClient = io.sent(to: .client)
                if expectedCause == .completed {
                    #expect(toMain == script.client, "\(simulation.plan!)")
                    #expect(toClient == script.main, "\(simulation.plan!)")
                } else {
                    #expect(toMain.isPrefix(of: script.client))
                    #expect(toClient.isPrefix(of: script.main))
                }
                for mirror in 0..<2 {
                    let stream = io.sent(to: .mirror(mirror))
                    #expect(stream.isPrefix(of: script.client), "mirror\(mirror) got a stream with a hole")
                    if !ended.mirrorMissing[mirror] && expectedCause == .completed {
                        #expect(stream == script.client, "\(simulation.plan!) mirror\(mirror)")
                    }
                    let stats = io.stats.mirrors[mirror]
                    #expect(stats.bytesSent.value + stats.bytesMissed.value == io.stats.bytesClientToMain.value,
                            "every client byte is either sent to or missed by mirror\(mirror)")
                }
                if case .mirror = peer, kind == .connect {
                    #expect(ended.mirrorMissing[0])
                }
            }
            if firedThisRound == 0 { break }
        }
        #expect(fired > 0, "the fault was never injected")
    }

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
                                       readAheadChunks: 2, mirrorLingerMs: 1_000, mirrorFailuresBeforeBackoff: 2)
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
            mirrorFailuresBeforeBackoff: 1_000)
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

// MARK: - SendQueue

@Suite("SessionTests.SendQueue")
struct SendQueueTests {
    @Test("append, partial consume, wrap-around and removal keep bytes and order")
    func sendQueue() {
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 3)
        defer { storage.deallocate() }
        var queue = SendQueue(storage: storage, capacity: 3)
        #expect(queue.isEmpty && !queue.isFull && queue.first == nil)
        queue.append(slot: 7, length: 100)
        queue.append(slot: 8, offset: 5, length: 50)
        #expect(queue.count == 2 && queue.bytes == 150)
        #expect(queue.consume(40) == nil)
        #expect(queue.first?.slot == 7 && queue.first?.offset == 40 && queue.first?.length == 60)
        #expect(queue.bytes == 110)
        #expect(queue.consume(60) == 7)
        #expect(queue.count == 1 && queue.first?.slot == 8 && queue.first?.offset == 5)
        queue.append(slot: 9, length: 10)
        queue.append(slot: 10, length: 20)  // wraps around the storage
        #expect(queue.isFull && queue.bytes == 80)
        #expect(queue.removeLast()?.slot == 10)
        #expect(queue.removeFirst()?.slot == 8)
        #expect(queue.count == 1 && queue.bytes == 10)
        #expect(queue.consume(10) == 9)
        #expect(queue.isEmpty && queue.bytes == 0)
        #expect(queue.removeLast() == nil && queue.removeFirst() == nil)
    }

    @Test("queues interleaved with a stride keep to their own entries and restart at position 0 when empty")
    func stridedQueues() {
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 8)
        storage.initialize(repeating: SendQueue.Chunk(slot: 99, offset: 0, length: 0), count: 8)
        defer { storage.deallocate() }
        var even = SendQueue(storage: storage, stride: 2, capacity: 4)
        var odd = SendQueue(storage: storage + 1, stride: 2, capacity: 4)
        for slot in UInt32(0)..<4 {
            even.append(slot: slot, length: 1)
            odd.append(slot: 10 + slot, length: 1)
        }
        #expect((0..<8).map { storage[$0].slot } == [0, 10, 1, 11, 2, 12, 3, 13])
        #expect(even.consume(1) == 0 && odd.consume(1) == 10)
        #expect(even.consume(1) == 1 && even.consume(1) == 2 && even.consume(1) == 3)
        #expect(even.isEmpty)
        // Emptied, it starts over at position 0 (entry 0), not where its head was.
        even.append(slot: 20, length: 1)
        #expect(storage[0].slot == 20)
        #expect(odd.first?.slot == 11 && odd.count == 3)
    }

    @Test("chunk capacity covers the client, main and every mirror's backlog")
    func chunkCapacity() {
        let limits = SessionLimits(mirrorCount: 3, backlogChunksMax: 10, readAheadChunks: 2)
        #expect(Session.chunkCapacity(limits) == 2 * 2 + 3 * 10)
    }
}

// MARK: - The fake's own checks

/// The checks in `FakeSessionIO` must fire, or every test above could pass
/// vacuously: here a "buggy session" (the test itself) breaks each rule.
@Suite("SessionTests.FakeChecks")
struct FakeChecksTests {
    private func sessionWithMainSendInFlight() throws -> (FakeSessionIO, Int32, FakeOp) {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, TestBytes.text("payload"))
        let send = try #require(io.pendingOp(.send, .main))
        return (io, try #require(io.fd(.main)), send)
    }

    private func tag(_ kind: OperationKind, _ peer: Peer, _ op: FakeOp) -> CompletionTag {
        CompletionTag(kind: kind.rawValue, endpoint: UInt8(peer.leg), generation: op.key.generation, slot: op.key.index)
    }

    @Test("close with an operation in flight, and a second close, are reported")
    func closeChecks() throws {
        let (io, mainFD, send) = try sessionWithMainSendInFlight()
        withKnownIssue { io.close(fd: mainFD, tag: tag(.close, .main, send)) }
        withKnownIssue { io.close(fd: mainFD, tag: tag(.close, .main, send)) }
        #expect(io.violations.first?.contains("with operations in flight") == true)
        #expect(io.violations.contains { $0.contains("second close") })
        #expect(io.violations.contains { $0.contains("after fd \(mainFD) was closed") })
    }

    @Test("a second send in flight, a shutdown before the queue is sent, and an op after cancel are reported")
    func orderingChecks() throws {
        let (io, mainFD, send) = try sessionWithMainSendInFlight()
        withKnownIssue { io.send(fd: mainFD, slot: send.slot, offset: 0, length: 1, tag: tag(.send, .main, send)) }
        #expect(io.violations.last?.contains("a second send in flight") == true)
        withKnownIssue { io.shutdownWrite(fd: mainFD, tag: tag(.shutdown, .main, send)) }
        #expect(io.violations.last?.contains("while a send is in flight") == true)
        io.cancel(fd: mainFD, tag: tag(.cancel, .main, send))
        withKnownIssue { io.drain(fd: mainFD, tag: tag(.drain, .main, send)) }
        #expect(io.violations.contains { $0.contains("after a cancel") })
    }

    @Test("recycling a held slot, and a slot overwritten under a send in flight, are reported")
    func slotChecks() throws {
        let (io, _, send) = try sessionWithMainSendInFlight()
        withKnownIssue { io.recycle(slot: send.slot) }
        #expect(io.violations.last?.contains("still held") == true)
        io.pool.pointer(send.slot).storeBytes(of: 0xFF, as: UInt8.self)
        withKnownIssue { io.completeSend(.main) }
        #expect(io.violations.contains { $0.contains("overwritten") })
    }

    @Test("a session that ends with an fd never closed is reported by expectQuiescent")
    func quiescenceCheck() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        try #require(io.start() != nil)
        withKnownIssue { io.expectQuiescent() }
        finish(io)
        io.expectQuiescent()
    }
}
