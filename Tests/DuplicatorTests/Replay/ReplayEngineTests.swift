import Platform
import Testing
@testable import Duplicator
@testable import Replay

/// The replayer's logic under a scripted IO: turns wait for the recorded
/// reply, the turn timeout moves on, every session gets one verdict
/// (match, diverged at its offset, shorter, longer, incomplete on a
/// refused connect), and sessions start on the recorded schedule.
final class FakeReplayIO: ReplayIO {
    enum Operation: Equatable {
        case connect(Int)
        case send(Int, String)
        case receive(Int)
    }

    var operations: [Operation] = []
    var buffers: [Int: UnsafeMutableRawPointer] = [:]

    func connect(slot: Int, fd: Int32) { operations.append(.connect(slot)) }

    func send(slot: Int, fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) {
        operations.append(.send(slot, String(decoding: UnsafeRawBufferPointer(start: bytes, count: count), as: UTF8.self)))
    }

    func receive(slot: Int, fd: Int32, into buffer: UnsafeMutableRawPointer, _ count: Int) {
        buffers[slot] = buffer
        operations.append(.receive(slot))
    }

    /// The target's bytes into the receive in flight on `slot`.
    func reply(_ engine: ReplayEngine<FakeReplayIO>, slot: Int, _ text: String, nowUs: UInt64) {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { buffers[slot]!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        engine.received(slot: slot, result: Int32(bytes.count), nowUs: nowUs)
    }

    func sends(_ slot: Int) -> [String] {
        operations.compactMap { if case .send(slot, let text) = $0 { text } else { nil } }
    }
}

private func session(_ exchanges: [(String, String)], startUs: UInt64 = 0, port: UInt16 = 40000) throws -> RecordedSession {
    let conversation = CaptureFixture.conversation(client: CaptureFixture.address("10.0.0.1", port),
                                                   server: CaptureFixture.address("10.0.0.2", 6379),
                                                   exchanges: exchanges, startUs: 1_000_000 + startUs)
    return try #require(try CaptureFixture.assemble(CaptureFixture.pcap(CaptureFixture.packets([conversation]))).sessions.first)
}

private func engine(_ sessions: [RecordedSession], speed: ReplayOptions.Speed = .max,
                    connections: Int = 8) -> (ReplayEngine<FakeReplayIO>, FakeReplayIO) {
    var options = ReplayOptions(target: SocketAddress(numericHost: "127.0.0.1", port: 9)!)
    options.compare = true
    options.speed = speed
    options.connectionsMax = connections
    options.turnTimeoutMs = 100
    let io = FakeReplayIO()
    let engine = ReplayEngine<FakeReplayIO>(sessions: sessions, options: options, nowUs: 0)
    engine.io = io
    return (engine, io)
}

/// Completes every send as whole.
private func completeSends(_ engine: ReplayEngine<FakeReplayIO>, _ io: FakeReplayIO, slot: Int, from: inout Int, nowUs: UInt64) {
    while from < io.operations.count {
        if case .send(slot, let text) = io.operations[from] {
            from += 1
            engine.sent(slot: slot, result: Int32(text.utf8.count), nowUs: nowUs)
        } else {
            from += 1
        }
    }
}

@Suite("ReplayEngineTests")
struct ReplayEngineTests {
    @Test("a turn goes once the target answered the previous one as much as the recording did; then match")
    func turnsWaitForReplies() throws {
        let (engine, io) = engine([try session([("GET a\r\n", "$1\r\nx\r\n"), ("GET b\r\n", "$-1\r\n")])])
        engine.startDue(nowUs: 0)
        #expect(io.operations == [.connect(0)])
        engine.connected(slot: 0, result: 0, nowUs: 10)
        #expect(io.sends(0) == ["GET a\r\n"])
        var seen = 0
        completeSends(engine, io, slot: 0, from: &seen, nowUs: 20)
        io.reply(engine, slot: 0, "$1\r\n", nowUs: 30)
        #expect(io.sends(0).count == 1, "half the reply: the next turn waits")
        io.reply(engine, slot: 0, "x\r\n", nowUs: 40)
        #expect(io.sends(0) == ["GET a\r\n", "GET b\r\n"])
        completeSends(engine, io, slot: 0, from: &seen, nowUs: 50)
        io.reply(engine, slot: 0, "$-1\r\n", nowUs: 60)
        engine.received(slot: 0, result: 0, nowUs: 70)
        #expect(engine.isDone)
        #expect(engine.counts.count(.match) == 1 && engine.counts.requests == 2 && engine.latencyCount == 2)
    }

    @Test("verdicts: diverged at the first differing byte, shorter, longer")
    func verdicts() throws {
        for (answer, verdict) in [("+OK\r\n+NO\r\n", ReplyComparison.Verdict.diverged), ("+OK\r\n", .shorter),
                                  ("+OK\r\n+OK\r\nextra", .longer)] {
            let (engine, io) = engine([try session([("SET a 1\r\n", "+OK\r\n"), ("SET b 2\r\n", "+OK\r\n")])])
            engine.startDue(nowUs: 0)
            engine.connected(slot: 0, result: 0, nowUs: 1)
            var seen = 0
            completeSends(engine, io, slot: 0, from: &seen, nowUs: 2)
            io.reply(engine, slot: 0, String(answer.prefix(5)), nowUs: 3)
            completeSends(engine, io, slot: 0, from: &seen, nowUs: 4)
            if answer.count > 5 { io.reply(engine, slot: 0, String(answer.dropFirst(5)), nowUs: 5) }
            engine.received(slot: 0, result: 0, nowUs: 6)
            #expect(engine.isDone, "\(verdict)")
            #expect(engine.counts.count(verdict) == 1, "\(verdict): \(engine.counts.verdicts)")
        }
    }

    @Test("a turn the target does not answer is followed by the next after the turn timeout, counted")
    func turnTimeout() throws {
        let (engine, io) = engine([try session([("A", "1"), ("B", "2")])])
        engine.startDue(nowUs: 0)
        engine.connected(slot: 0, result: 0, nowUs: 0)
        var seen = 0
        completeSends(engine, io, slot: 0, from: &seen, nowUs: 0)
        engine.tick(nowUs: 50_000)
        #expect(io.sends(0) == ["A"])
        engine.tick(nowUs: 100_001)
        #expect(io.sends(0) == ["A", "B"] && engine.counts.turnsTimedOut == 1)
    }

    @Test("a refused connect: incomplete, counted; the other sessions go on")
    func refused() throws {
        let (engine, io) = engine([try session([("A", "1")]), try session([("B", "2")], startUs: 10, port: 40001)])
        engine.startDue(nowUs: 0)
        #expect(io.operations == [.connect(0), .connect(1)])
        engine.connected(slot: 0, result: -111, nowUs: 1)
        #expect(engine.counts.connectFailed == 1 && engine.counts.count(.incomplete) == 1)
        #expect(engine.counts.firstConnectErrno == 111)
    }

    @Test("--speed 1 keeps the recorded gaps between session starts; --speed 2 halves them; --connections bounds them")
    func schedule() throws {
        let sessions = [try session([("A", "1")]), try session([("B", "2")], startUs: 1_000_000, port: 40001)]
        for (speed, gapUs) in [(ReplayOptions.Speed.scaled(1), UInt64(1_000_000)), (.scaled(2), 500_000)] {
            let (engine, io) = engine(sessions, speed: speed)
            engine.startDue(nowUs: 0)
            #expect(io.operations.count == 1)
            engine.startDue(nowUs: gapUs - 1000)
            #expect(io.operations.count == 1)
            engine.startDue(nowUs: gapUs)
            #expect(io.operations.count == 2)
        }
        let (bounded, io) = engine(sessions, speed: .max, connections: 1)
        bounded.startDue(nowUs: 0)
        #expect(io.operations == [.connect(0)])
        #expect(bounded.nextDueUs(nowUs: 0) == nil)
    }
}
