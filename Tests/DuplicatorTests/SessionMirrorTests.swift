import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Mirrors that lag or fail never touch the client, without sockets.
extension SessionTests {
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
        #expect(io.record(.mirror(0))?.cancelRequested == true, "its discard is still in flight")
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
    func mirrorDiscardReset() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeDiscard(.mirror(0), result: -ECONNRESET)
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
        io.completeDiscard(.mirror(0), result: 0)
        #expect(!io.hasPending(.discard, .mirror(0)), "no read after its EOF")
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
        io.openFailures[.mirror(0)] = EMFILE
        try #require(io.start() != nil)
        #expect(io.requests(.connect).map(\.connectLeg) == [.main, .mirror(1)])
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
        #expect(io.requests(.connect).map(\.connectLeg) == [.main])
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
        #expect(io.requests(.connect).map(\.connectLeg) == [.main, .mirror(0)])
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
}
