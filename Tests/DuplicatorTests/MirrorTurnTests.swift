import Glibc
import Ring
import Testing
@testable import Duplicator

// The conversation's turns, for mirrors: the client's bytes after main
// replied (a new turn) reach a mirror only once it answered the turn before,
// or after the turn timeout, for the first `mirrorTurns` turns. Main never
// waits. Driven through `FakeSessionIO`.

private func turnLimits(turns: Int = 4, timeoutUs: Int = 250_000, batchBytes: Int = 64 * 1024,
                        delayUs: Int = 1_000, backlogChunksMax: Int = 16) -> SessionLimits {
    SessionLimits(mirrorCount: 1, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                  backlogBytesMax: 1 << 20, backlogChunksMax: backlogChunksMax, readAheadChunks: 2, mirrorLingerMs: 2_000,
                  mirrorFailuresBeforeBackoff: 3, mirrorBatchBytes: batchBytes, mirrorBatchDelayUs: delayUs,
                  mirrorTurns: turns, mirrorTurnTimeoutUs: timeoutUs)
}

@Suite("SessionTests.MirrorTurns")
struct MirrorTurnTests {
    /// The client's turn: main gets it at once; the mirror's batch is let go
    /// (if nothing holds it) and completed.
    private func clientTurn(_ io: FakeSessionIO, _ bytes: [UInt8]) {
        io.completeRecv(.client, bytes)
        io.flushSends(.main)
    }

    private func mainReplies(_ io: FakeSessionIO, _ bytes: [UInt8]) {
        io.completeRecv(.main, bytes)
        io.flushSends(.client)
    }

    /// Lets the batch delay pass (not a turn timeout) and completes the mirror's sends.
    private func passBatchDelay(_ io: FakeSessionIO) {
        io.context.nowUs += 1_000
        io.fireDueFlushes()
        io.flushSends(.mirror(0))
    }

    /// `count` small turns of the client, each after a reply of main and
    /// past the batch delay; `each` looks after each. Returns their bytes.
    private func smallTurns(_ io: FakeSessionIO, _ count: Int, seed: UInt64, each: (Int) -> Void = { _ in }) -> [UInt8] {
        var bytes: [UInt8] = []
        for turn in 0..<count {
            mainReplies(io, Array("R".utf8))
            let turnBytes = TestBytes.random(30 + turn, seed: seed + UInt64(turn))
            bytes += turnBytes
            clientTurn(io, turnBytes)
            passBatchDelay(io)
            each(turn)
        }
        return bytes
    }

    static let sslRequest: [UInt8] = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]
    static let startup = TestBytes.random(41, seed: 77)

    @Test("PostgreSQL's SSLRequest: the startup message reaches the mirror only after the mirror answered; main at once")
    func newTurnWaitsForTheMirrorsAnswer() throws {
        let io = try FakeSessionIO(limits: turnLimits(), slotCount: 16)
        io.context.nowUs = 1_000_000
        try #require(io.start() != nil)
        io.connectAll()
        clientTurn(io, Self.sslRequest)
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest)
        mainReplies(io, Array("N".utf8))
        clientTurn(io, Self.startup)
        #expect(io.sent(to: .main) == Self.sslRequest + Self.startup, "main never waits for a mirror")
        passBatchDelay(io)
        io.context.nowUs += 100_000
        io.fireDueFlushes()
        #expect(!io.hasPending(.send, .mirror(0)), "the mirror has not answered the SSLRequest yet")
        #expect(io.flushRequests.contains { $0.timer == .mirrorTurn })
        io.completeDiscard(.mirror(0), result: 1)
        #expect(io.pendingOp(.send, .mirror(0))?.length == Self.startup.count, "its answer lets the turn go, at once")
        io.flushSends(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest + Self.startup)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        finish(io)
        io.expectQuiescent()
    }

    /// Under load a PostgreSQL mirror may take longer to fork its backend
    /// and answer the SSLRequest than main takes to answer several of the
    /// client's next turns: everything after the SSLRequest waits for the
    /// mirror's "N" (within the turn timeout), then goes in order.
    @Test("a slow mirror: eight of the client's turns pile up behind its unanswered SSLRequest and go only after its answer")
    func slowMirrorKeepsItsTurns() throws {
        let io = try FakeSessionIO(limits: turnLimits(backlogChunksMax: 256), slotCount: 32)
        io.context.nowUs = 1_000_000
        try #require(io.start() != nil)
        io.connectAll()
        clientTurn(io, Self.sslRequest)
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest)
        let rest = smallTurns(io, 8, seed: 90)
        #expect(io.sent(to: .main) == Self.sslRequest + rest, "main never waits for a mirror")
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest, "the mirror has not answered the SSLRequest yet")
        io.completeDiscard(.mirror(0), result: 1)
        io.flushSends(.mirror(0))
        // Then one turn per answer (the kept ones), and the rest freely.
        for _ in 0..<8 where io.sent(to: .mirror(0)).count < Self.sslRequest.count + rest.count {
            io.completeDiscard(.mirror(0), result: 1)
            passBatchDelay(io)
        }
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest + rest)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        finish(io)
        io.expectQuiescent()
    }

    /// A mirror that never answers (a sink) holds the client's turns behind
    /// its first for the turn timeout. Across a thousand sessions that took
    /// more than the mirrors' share of the pool, and the sessions that then
    /// let a slot go had their mirror cut (ResilienceTests' 1000 sessions,
    /// in CI). A leg holds at most its even part of half the share: here
    /// the one session's one mirror leg, 2 of the 4 slots' share.
    @Test("a leg holds no more turns than its part of half the mirrors' share of the pool; then they go, and no mirror is cut")
    func heldTurnsShareThePool() throws {
        let io = try FakeSessionIO(limits: turnLimits(backlogChunksMax: 256), slotCount: 8)
        #expect(io.context.mirrorOnlySlotsMax == 4)
        io.context.nowUs = 1_000_000
        try #require(io.start() != nil)
        io.connectAll()
        clientTurn(io, Self.sslRequest)
        passBatchDelay(io)
        let rest = smallTurns(io, 3, seed: 190) { turn in
            #expect(io.context.mirrorOnlySlots == (turn < 2 ? turn + 1 : 0), "turn \(turn): two are held, the third lets all go")
        }
        #expect(io.sent(to: .main) == Self.sslRequest + rest, "main never waits for a mirror")
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest + rest, "the held turns went")
        // Turns are no longer kept: the next goes without waiting for an answer.
        mainReplies(io, Array("R".utf8))
        let last = TestBytes.random(50, seed: 199)
        clientTurn(io, last)
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest + rest + last)
        #expect(io.stats.mirrors[0].sessionsCutForPoolShare.value == 0)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        finish(io)
        io.expectQuiescent()
    }

    /// Both turns wait in the mirror's queue before its first send: the
    /// first send stops at the turn's end, not at the queue's.
    @Test("two turns queued before the mirror's first send: the second goes only after the mirror answered the first")
    func queuedTurnsGoOneAtATime() throws {
        let io = try FakeSessionIO(limits: turnLimits(), slotCount: 16)
        io.context.nowUs = 1_000_000
        try #require(io.start() != nil)
        io.connectAll()
        clientTurn(io, Self.sslRequest)
        mainReplies(io, Array("N".utf8))
        clientTurn(io, Self.startup)
        #expect(io.sent(to: .main) == Self.sslRequest + Self.startup, "main never waits for a mirror")
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest, "the startup message waits for the mirror's answer")
        io.completeDiscard(.mirror(0), result: 1)
        io.flushSends(.mirror(0))
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest + Self.startup)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        finish(io)
        io.expectQuiescent()
    }

    @Test("a mirror that does not answer a turn in time gets it anyway, and is not waited for again")
    func turnTimeout() throws {
        let io = try FakeSessionIO(limits: turnLimits(timeoutUs: 250_000), slotCount: 16)
        io.context.nowUs = 1_000_000
        try #require(io.start() != nil)
        io.connectAll()
        let mirrorFD = try #require(io.fd(.mirror(0)))
        clientTurn(io, Self.sslRequest)
        passBatchDelay(io)
        mainReplies(io, Array("N".utf8))
        clientTurn(io, Self.startup)
        passBatchDelay(io)
        let blockedUs = io.context.nowUs
        #expect(!io.hasPending(.send, .mirror(0)))
        #expect(!io.discardingInBatches.contains(mirrorFD), "a mirror keeping turns wakes on every reply")
        io.advanceToNextFlush()
        #expect(io.context.nowUs - blockedUs <= 250_000)
        #expect(io.pendingOp(.send, .mirror(0))?.length == Self.startup.count)
        io.flushSends(.mirror(0))
        #expect(io.discardingInBatches.contains(mirrorFD), "turns are no longer kept: replies discard in batches")
        // The next turn only waits for the batch delay.
        mainReplies(io, Array("R".utf8))
        let query = TestBytes.random(30, seed: 3)
        clientTurn(io, query)
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == Self.sslRequest + Self.startup + query)
        finish(io)
        io.expectQuiescent()
    }

    /// 128 slots: the one leg's part of half the mirrors' share is 32 receives.
    @Test("a stream piling up behind an unanswered turn is not held: past 64 KiB, its part of the pool or half the backlog's receives it goes at once",
          arguments: [(9_000, 8, 256), (100, 33, 256), (100, 9, 16)])
    func heldStreamIsNotATurn(pieceBytes: Int, pieces: Int, backlogChunksMax: Int) throws {
        let io = try FakeSessionIO(limits: turnLimits(backlogChunksMax: backlogChunksMax), slotCount: 128, slotSize: 16 * 1024)
        try #require(io.start() != nil)
        io.connectAll()
        let mirrorFD = try #require(io.fd(.mirror(0)))
        let ping = Array("ping\n".utf8)
        clientTurn(io, ping)
        passBatchDelay(io)
        mainReplies(io, ping)
        // The mirror (a sink) never answers; the client streams.
        var stream = ping
        for index in 0..<pieces {
            let piece = TestBytes.random(pieceBytes, seed: UInt64(60 + index))
            stream += piece
            clientTurn(io, piece)
        }
        passBatchDelay(io)
        io.flushSends(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == stream, "no turn timeout was waited for")
        #expect(io.discardingInBatches.contains(mirrorFD))
        finish(io)
        io.expectQuiescent()
    }

    @Test("after the kept turns, turns no longer wait and replies discard in batches")
    func turnsEnd() throws {
        let io = try FakeSessionIO(limits: turnLimits(turns: 2), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        let mirrorFD = try #require(io.fd(.mirror(0)))
        var expected: [UInt8] = []
        for turn in 0..<5 {
            let bytes = TestBytes.random(20 + turn, seed: UInt64(turn))
            expected += bytes
            clientTurn(io, bytes)
            passBatchDelay(io)
            #expect(io.sent(to: .mirror(0)) == expected, "turn \(turn): the mirror answered every turn before")
            io.completeDiscard(.mirror(0), result: 5)
            mainReplies(io, Array("ok".utf8))
        }
        #expect(io.discardingInBatches.contains(mirrorFD))
        finish(io)
        io.expectQuiescent()
    }

    @Test("a server that speaks first: the client's first bytes wait for the mirror's own greeting")
    func serverSpeaksFirst() throws {
        let io = try FakeSessionIO(limits: turnLimits(), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        mainReplies(io, Array("220 main ready\r\n".utf8))
        let hello = Array("EHLO client\r\n".utf8)
        clientTurn(io, hello)
        passBatchDelay(io)
        #expect(!io.hasPending(.send, .mirror(0)), "the mirror has not greeted yet")
        io.completeDiscard(.mirror(0), result: 18)
        io.flushSends(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == hello)
        finish(io)
        io.expectQuiescent()
    }

    @Test("a whole turn held while its predecessor is unanswered is sent exactly once it is, without batching too",
          arguments: [0, 64 * 1024])
    func heldTurnsStayExact(batchBytes: Int) throws {
        let io = try FakeSessionIO(limits: turnLimits(batchBytes: batchBytes), slotCount: 16)
        try #require(io.start() != nil)
        io.connectAll()
        let first = TestBytes.random(100, seed: 1)
        clientTurn(io, first)
        passBatchDelay(io)
        mainReplies(io, [1])
        // The second turn arrives in three receives.
        let parts = (0..<3).map { TestBytes.random(50, seed: UInt64(10 + $0)) }
        for part in parts { clientTurn(io, part) }
        passBatchDelay(io)
        #expect(io.sent(to: .mirror(0)) == first)
        // A short send of the first turn's answer-gated rest is re-issued exactly.
        io.completeDiscard(.mirror(0), result: 3)
        if batchBytes > 0 {
            io.completeSend(.mirror(0), count: 70)
        }
        io.flushSends(.mirror(0))
        #expect(io.sent(to: .mirror(0)) == first + parts.flatMap { $0 })
        finish(io)
        io.expectQuiescent()
    }
}
