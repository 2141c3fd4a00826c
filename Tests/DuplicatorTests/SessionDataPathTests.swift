import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// The data path, back-pressure and half-close, without sockets.
extension SessionTests {
    // MARK: - Start and the data path

    @Test("start opens and connects main then each mirror, with their timeouts, and reads the client")
    func startConnectsEveryLeg() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        let session = try #require(io.start())
        #expect(session.isActive && !session.isEnding)
        let connects = io.requests(.connect)
        #expect(connects.map(\.connectLeg) == [.main, .mirror(0), .mirror(1)])
        #expect(connects.map(\.peer) == [.main, .mirror(0), .mirror(1)])
        #expect(connects.map(\.timeoutMs) == [1_000, 500, 500])
        #expect(io.hasPending(.recv, .client))
        #expect(!io.hasPending(.recv, .main), "main is read only once it is connected")
        #expect(io.stats.sessionsAccepted.value == 1)
        #expect(io.stats.sessionsActive.value == 1)
        io.connectAll()
        #expect(io.hasPending(.recv, .main))
        #expect(io.hasPending(.discard, .mirror(0)) && io.hasPending(.discard, .mirror(1)))
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
            io.completeDiscard(.mirror(0), result: 4_096)
            io.completeDiscard(.mirror(1), result: 17)
        }
        #expect(io.sent(to: .main) == fromClient)
        #expect(io.sent(to: .mirror(0)) == fromClient)
        #expect(io.sent(to: .mirror(1)) == fromClient)
        #expect(io.sent(to: .client) == fromMain)
        #expect(io.stats.bytesClientToMain.value == UInt64(fromClient.count))
        #expect(io.stats.bytesMainToClient.value == UInt64(fromMain.count))
        #expect(io.stats.mirrors.map { $0.bytesSent.value } == [UInt64(fromClient.count), UInt64(fromClient.count)])
        #expect(io.stats.mirrors.map { $0.bytesMissed.value } == [0, 0])
        // Every client send came from a slot main's recv filled, never from a discard.
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
        io.completeDiscard(.mirror(0), result: 0)
        #expect(io.record(.mirror(0))?.closeCount == 1)
        io.completeDiscard(.mirror(1), result: 0)
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
}
