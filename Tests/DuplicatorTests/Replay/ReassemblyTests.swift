import Testing
import TestSupport
@testable import Duplicator
@testable import Replay

// TCP reassembly: one direction (`StreamReassembler`), the connections of
// a capture (`CaptureAssembler`), the turns of a session, and a capture
// rewritten with reordering and duplicates giving the same streams.

private func add(_ stream: inout StreamReassembler, _ sequence: UInt32, _ text: String, time: UInt64 = 0, fin: Bool = false) {
    Array(text.utf8).withUnsafeBytes { stream.add(sequence: sequence, payload: $0, cutBytes: 0, fin: fin, timeUs: time) }
}

private func text(_ stream: StreamReassembler) -> String { String(decoding: stream.bytes, as: UTF8.self) }

@Suite("ReassemblyTests")
struct ReassemblyTests {
    @Test("in order, out of order, overlapping, repeated")
    func oneDirection() {
        var stream = StreamReassembler()
        stream.start(synSequence: 999)
        add(&stream, 1006, "world")  // ahead of a hole
        #expect(stream.bytes.isEmpty && stream.hasHole)
        add(&stream, 1000, "hello")
        #expect(text(stream) == "hello")
        add(&stream, 1005, " ")  // fills the hole
        #expect(text(stream) == "hello world" && !stream.hasHole)
        add(&stream, 1000, "hello")  // a retransmit
        add(&stream, 1003, "lo wor")  // an overlap wholly inside
        add(&stream, 1009, "ld!", fin: true)  // overlaps the end
        #expect(text(stream) == "hello world!")
        #expect(stream.duplicateSegments == 2 && stream.outOfOrderSegments == 1)
        #expect(stream.endedCleanly)
    }

    @Test("sequence numbers that wrap past 2^32")
    func wraps() {
        var stream = StreamReassembler()
        stream.start(synSequence: UInt32.max - 3)
        add(&stream, UInt32.max - 2, "abc")
        add(&stream, 3, "ghi")
        add(&stream, 0, "def")
        #expect(text(stream) == "abcdefghi" && !stream.hasHole)
    }

    @Test("segments before the SYN (a reordered capture) are placed once it comes; a stream without one has a hole")
    func early() {
        var stream = StreamReassembler()
        add(&stream, 101, "xyz")
        #expect(stream.hasHole)
        stream.start(synSequence: 100)
        #expect(text(stream) == "xyz" && !stream.hasHole)
    }

    @Test("direction from the SYN, from the SYN-ACK, or --server-port; a missed handshake is skipped and counted")
    func direction() throws {
        let client = CaptureFixture.address("10.0.0.1", 40000)
        let server = CaptureFixture.address("10.0.0.2", 5432)
        var packets = CaptureFixture.packets([CaptureFixture.conversation(client: client, server: server, exchanges: [("Q", "R")])])
        // Without the SYN: the SYN-ACK still says who the server is.
        let noSYN = Array(packets.dropFirst())
        var sessions = try CaptureFixture.assemble(CaptureFixture.pcap(noSYN)).sessions
        #expect(sessions.count == 0)  // the client's stream has no start: skipped
        sessions = try CaptureFixture.assemble(CaptureFixture.pcap(packets)).sessions
        #expect(sessions.count == 1 && sessions[0].client == client && sessions[0].server == server)
        // The capture begins after the handshake: skipped, counted, said.
        packets.removeFirst(3)
        let result = try CaptureFixture.assemble(CaptureFixture.pcap(packets))
        #expect(result.sessions.isEmpty && result.counts.skippedNoHandshake == 1)
        #expect(ReplayInput.notes(result.counts).contains { $0.contains("handshake") })
        // --server-port keeps only that port's connections.
        let other = CaptureFixture.packets([CaptureFixture.conversation(client: client, server: server, exchanges: [("Q", "R")])])
        #expect(try CaptureFixture.assemble(CaptureFixture.pcap(other), serverPort: 6379).sessions.isEmpty)
        #expect(try CaptureFixture.assemble(CaptureFixture.pcap(other), serverPort: 5432).sessions.count == 1)
    }

    @Test("turns: a greeting first, pipelined requests, replies in pieces")
    func turns() throws {
        let client = CaptureFixture.address("10.0.0.1", 40000)
        let server = CaptureFixture.address("10.0.0.2", 3306)
        let conversation = Pcapng.Conversation(
            client: client, server: server,
            clientSegments: [.init(timeUs: 20, bytes: Array("A".utf8)), .init(timeUs: 21, bytes: Array("B".utf8)),
                             .init(timeUs: 40, bytes: Array("C".utf8))],
            serverSegments: [.init(timeUs: 10, bytes: Array("hello".utf8)), .init(timeUs: 30, bytes: Array("ab".utf8)),
                             .init(timeUs: 31, bytes: Array("c".utf8)), .init(timeUs: 50, bytes: Array("d".utf8))],
            startUs: 1, endUs: 60)
        let session = try #require(try CaptureFixture.assemble(CaptureFixture.pcapng(CaptureFixture.packets([conversation]))).sessions.first)
        #expect(session.turns == [
            .init(requestEnd: 0, replyEnd: 5, timeUs: 10),
            .init(requestEnd: 2, replyEnd: 8, timeUs: 20),
            .init(requestEnd: 3, replyEnd: 9, timeUs: 40),
        ])
        #expect(session.requestCount == 2)
        #expect(session.clientClosed && session.serverClosed)
    }

    @Test("a port reused by a new connection is a new session")
    func portReuse() throws {
        let client = CaptureFixture.address("10.0.0.1", 40000)
        let server = CaptureFixture.address("10.0.0.2", 6379)
        var first = CaptureFixture.conversation(client: client, server: server, exchanges: [("one", "1")], startUs: 1_000)
        var second = CaptureFixture.conversation(client: client, server: server, exchanges: [("two", "2")], startUs: 9_000)
        first.endUs = 2_000
        second.endUs = 10_000
        // The same initial sequence numbers would say "the same connection": the encoder's are fixed, so shift the second's.
        var packets = CaptureFixture.packets([first])
        packets += CaptureFixture.packets([second]).map { packet in
            var bytes = packet.bytes
            bytes[24] &+= 1  // TCP sequence number's high byte (20-byte IPv4 header + 4)
            return (packet.timeUs, bytes)
        }
        let sessions = try CaptureFixture.assemble(CaptureFixture.pcap(packets)).sessions
        #expect(sessions.map { String(decoding: $0.clientBytes, as: UTF8.self) } == ["one", "two"])
    }

    @Test("a capture rewritten with reordering and duplicates reassembles to the same streams and turns", arguments: [1, 2, 3, 4] as [UInt64])
    func reorderedAndDuplicated(seed: UInt64) throws {
        var generator = SeededGenerator(seed: seed)
        var conversations: [Pcapng.Conversation] = []
        for index in 0..<6 {
            let client = CaptureFixture.address("10.0.0.1", UInt16(40000 + index))
            let server = CaptureFixture.address("10.0.0.2", 6379)
            let exchanges = (0..<Int.random(in: 1...8, using: &generator)).map { turn -> (String, String) in
                (String(repeating: "q\(turn)", count: Int.random(in: 1...5000, using: &generator)),
                 String(repeating: "r\(turn)", count: Int.random(in: 0...20000, using: &generator)))
            }
            conversations.append(CaptureFixture.conversation(client: client, server: server, exchanges: exchanges,
                                                             startUs: 1_000_000 + UInt64(index) * 37))
        }
        let original = CaptureFixture.pcap(CaptureFixture.packets(conversations))
        let rewritten = CaptureFixture.rewriteReorderedWithDuplicates(original, seed: seed)
        #expect(rewritten != original)
        let before = try CaptureFixture.assemble(original)
        let after = try CaptureFixture.assemble(rewritten)
        #expect(before.sessions.count == 6 && after.sessions.count == 6)
        #expect(after.counts.duplicateSegments > 0 && after.counts.outOfOrderSegments > 0)
        for (one, other) in zip(before.sessions, after.sessions) {
            #expect(one.client == other.client)
            #expect(one.clientBytes == other.clientBytes)
            #expect(one.serverBytes == other.serverBytes)
            #expect(one.turns.map(\.requestEnd) == other.turns.map(\.requestEnd))
            #expect(one.turns.map(\.replyEnd) == other.turns.map(\.replyEnd))
        }
    }
}
