import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Duplicator

// `--dump-dir`: the pcapng encoder (pure), the session's recording and the
// dump request of a pair whose replies differ (sans-IO), the writer's files.

private func address(_ text: String, _ port: UInt16) -> ProxyAddress {
    if text.contains(":") {
        var raw = in6_addr()
        precondition(inet_pton(AF_INET6, text, &raw) == 1)
        return withUnsafeBytes(of: raw) { ProxyAddress(family: .ipv6, networkBytes: $0, port: port) }
    }
    var raw = in_addr()
    precondition(inet_pton(AF_INET, text, &raw) == 1)
    return withUnsafeBytes(of: raw) { ProxyAddress(family: .ipv4, networkBytes: $0, port: port) }
}

private func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
    UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
}

private func be16(_ bytes: ArraySlice<UInt8>, _ at: Int) -> UInt16 {
    UInt16(bytes[bytes.startIndex + at]) << 8 | UInt16(bytes[bytes.startIndex + at + 1])
}

private func be32(_ bytes: ArraySlice<UInt8>, _ at: Int) -> UInt32 {
    UInt32(be16(bytes, at)) << 16 | UInt32(be16(bytes, at + 2))
}

/// The blocks of a pcapng file: (type, body).
private func blocks(_ file: [UInt8]) -> [(type: UInt32, body: ArraySlice<UInt8>)] {
    var out: [(UInt32, ArraySlice<UInt8>)] = []
    var at = 0
    while at < file.count {
        let type = le32(file, at)
        let length = Int(le32(file, at + 4))
        precondition(length >= 12 && length % 4 == 0 && at + length <= file.count)
        #expect(le32(file, at + length - 4) == UInt32(length), "trailing length")
        out.append((type, file[(at + 8)..<(at + length - 4)]))
        at += length
    }
    return out
}

/// A packet of an EPB: (time, packet bytes).
private func packet(_ body: ArraySlice<UInt8>) -> (timeUs: UInt64, bytes: ArraySlice<UInt8>) {
    let base = Array(body)
    let time = UInt64(le32(base, 4)) << 32 | UInt64(le32(base, 8))
    let captured = Int(le32(base, 12))
    return (time, body[(body.startIndex + 20)..<(body.startIndex + 20 + captured)])
}

private struct TCPSegment {
    var sourcePort: UInt16, destinationPort: UInt16, seq: UInt32, ack: UInt32, flags: UInt8
    var payload: [UInt8]
    var checksumValid: Bool
}

/// Parses an IPv4 or IPv6 packet with a TCP segment, checking the checksums.
private func tcp(_ bytes: ArraySlice<UInt8>) -> TCPSegment {
    let version = bytes[bytes.startIndex] >> 4
    let headerLength = version == 4 ? 20 : 40
    let addressOffset = version == 4 ? 12 : 8
    let addressLength = version == 4 ? 4 : 16
    if version == 4 {
        #expect(Pcapng.checksumFold(Pcapng.checksumAdd(0, bytes.prefix(20))) == 0, "IPv4 header checksum")
        #expect(Int(be16(bytes, 2)) == bytes.count)
    } else {
        #expect(Int(be16(bytes, 4)) == bytes.count - 40)
    }
    let segment = bytes.dropFirst(headerLength)
    var sum = Pcapng.checksumAdd(0, bytes[(bytes.startIndex + addressOffset)..<(bytes.startIndex + addressOffset + 2 * addressLength)])
    sum &+= 6 &+ UInt32(segment.count)
    sum = Pcapng.checksumAdd(sum, segment)
    return TCPSegment(sourcePort: be16(segment, 0), destinationPort: be16(segment, 2), seq: be32(segment, 4),
                      ack: be32(segment, 8), flags: segment[segment.startIndex + 13], payload: Array(segment.dropFirst(20)),
                      checksumValid: Pcapng.checksumFold(sum) == 0)
}

@Suite("DumpTests")
struct DumpTests {
    // MARK: The encoder

    @Test("a file is a section header, a raw-IP interface and one packet block per packet")
    func blockLayout() {
        let conversation = Pcapng.Conversation(
            client: address("10.0.0.1", 40000), server: address("10.0.0.2", 8080),
            clientSegments: [Pcapng.Segment(timeUs: 1_000_010, bytes: TestBytes.text("GET"))],
            serverSegments: [Pcapng.Segment(timeUs: 1_000_020, bytes: TestBytes.text("200 OK"))],
            startUs: 1_000_000, endUs: 1_000_030)
        let file = Pcapng.file([conversation], comment: "hello")
        let all = blocks(file)
        #expect(all.count == 2 + 3 + 2 + 3)
        #expect(all[0].type == 0x0A0D_0D0A)
        let header = Array(all[0].body)
        #expect(le32(header, 0) == 0x1A2B_3C4D)
        #expect(header[4] == 1 && header[5] == 0 && header[6] == 0)
        #expect(String(decoding: header[20..<25], as: UTF8.self) == "hello")
        #expect(all[1].type == 1)
        #expect(all[1].body.first == 101 && all[1].body.dropFirst().first == 0, "LINKTYPE_RAW")
        for block in all.dropFirst(2) { #expect(block.type == 6) }
        let times = all.dropFirst(2).map { packet($0.body).timeUs }
        #expect(times == [1_000_000, 1_000_000, 1_000_000, 1_000_010, 1_000_020, 1_000_030, 1_000_030, 1_000_030])
    }

    @Test("handshake, data and FINs carry consistent sequence numbers and valid checksums", arguments: [false, true])
    func sequenceNumbers(ipv6: Bool) {
        let client = ipv6 ? address("2001:db8::1", 40000) : address("192.0.2.7", 40000)
        let server = ipv6 ? address("2001:db8::2", 6379) : address("192.0.2.8", 6379)
        let big = TestBytes.random(Pcapng.segmentBytesMax + 10, seed: 3)
        let conversation = Pcapng.Conversation(
            client: client, server: server,
            clientSegments: [Pcapng.Segment(timeUs: 5, bytes: TestBytes.text("ping")), Pcapng.Segment(timeUs: 9, bytes: TestBytes.text("more"))],
            serverSegments: [Pcapng.Segment(timeUs: 7, bytes: big)], startUs: 1, endUs: 20)
        let segments = blocks(Pcapng.file([conversation])).dropFirst(2).map { tcp(packet($0.body).bytes) }
        for segment in segments { #expect(segment.checksumValid) }
        let flags = segments.map(\.flags)
        #expect(flags == [0x02, 0x12, 0x10, 0x18, 0x18, 0x18, 0x18, 0x11, 0x11, 0x10], "SYN, SYN-ACK, ACK, data (the big reply in two), FIN-ACKs, ACK")
        let clientISN = segments[0].seq
        let serverISN = segments[1].seq
        #expect(segments[1].ack == clientISN &+ 1)
        #expect(segments[3].seq == clientISN &+ 1 && segments[3].payload == TestBytes.text("ping"))
        #expect(segments[4].seq == serverISN &+ 1 && segments[4].ack == clientISN &+ 5)
        #expect(segments[4].payload.count == Pcapng.segmentBytesMax)
        #expect(segments[5].seq == serverISN &+ 1 &+ UInt32(Pcapng.segmentBytesMax))
        #expect(segments[4].payload + segments[5].payload == big)
        #expect(segments[6].seq == clientISN &+ 5 && segments[6].ack == serverISN &+ 1 &+ UInt32(big.count))
        #expect(segments[7].seq == clientISN &+ 9)
        #expect(segments[8].seq == serverISN &+ 1 &+ UInt32(big.count) && segments[8].ack == clientISN &+ 10)
        #expect(segments[9].ack == serverISN &+ 2 &+ UInt32(big.count))
        #expect(segments[0].sourcePort == 40000 && segments[0].destinationPort == 6379)
        #expect(segments[4].sourcePort == 6379 && segments[4].destinationPort == 40000)
    }

    @Test("two conversations' packets are in one time order")
    func conversationsInterleave() {
        func conversation(_ port: UInt16, _ reply: UInt64) -> Pcapng.Conversation {
            Pcapng.Conversation(client: address("10.0.0.1", 40000), server: address("10.0.0.2", port),
                                clientSegments: [Pcapng.Segment(timeUs: 10, bytes: TestBytes.text("q"))],
                                serverSegments: [Pcapng.Segment(timeUs: reply, bytes: TestBytes.text("a"))], startUs: 0, endUs: 50)
        }
        let packets = blocks(Pcapng.file([conversation(1, 30), conversation(2, 20)])).dropFirst(2).map { packet($0.body) }
        let times = packets.map(\.timeUs)
        #expect(times == times.sorted())
        let ports = packets.map { tcp($0.bytes) }.map { $0.sourcePort == 40000 ? $0.destinationPort : $0.sourcePort }
        #expect(ports == [1, 1, 1, 2, 2, 2, 1, 2, 2, 1, 1, 1, 1, 2, 2, 2], "each conversation's own order kept on a tie")
    }

    @Test("an IPv4 client of an IPv6 server is shown IPv4-mapped, in IPv6")
    func mixedFamilies() {
        let conversation = Pcapng.Conversation(client: address("127.0.0.1", 1), server: address("::1", 2),
                                               clientSegments: [], serverSegments: [], startUs: 0, endUs: 0)
        let packets = blocks(Pcapng.file([conversation])).dropFirst(2).map { packet($0.body).bytes }
        for bytes in packets { #expect(bytes.first! >> 4 == 6) }
        #expect(packets.count == 6)
    }

    // MARK: The recording

    @Test("a recording keeps at most its bound per stream and counts the rest")
    func recordingBound() {
        var recording = SessionRecording(mirrorCount: 1, bytesMax: 10)
        recording.reset(nowUs: 100)
        #expect(recording.streams[0].bytes.capacity == 0, "nothing allocated before bytes arrive")
        TestBytes.text("0123456").withUnsafeBytes { recording.append(0, $0, nowUs: 101) }
        TestBytes.text("789abc").withUnsafeBytes { recording.append(0, $0, nowUs: 102) }
        #expect(recording.streams[0].bytes == TestBytes.text("0123456789"))
        #expect(recording.streams[0].droppedBytes == 3)
        #expect(recording.streams[0].segments(offsetUs: 1000)
                == [Pcapng.Segment(timeUs: 1101, bytes: TestBytes.text("0123456")), Pcapng.Segment(timeUs: 1102, bytes: TestBytes.text("789"))])
        TestBytes.text("x").withUnsafeBytes { recording.append(2, $0, nowUs: 103) }
        recording.reset(nowUs: 200)
        #expect(recording.streams.allSatisfy { $0.bytes.isEmpty && $0.droppedBytes == 0 })
    }

    // MARK: The session (sans-IO)

    private static func limits(dumpBytes: Int) -> SessionLimits {
        var limits = SessionLimits(mirrorCount: 1, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                                   backlogBytesMax: 1 << 20, backlogChunksMax: 16, readAheadChunks: 2, mirrorLingerMs: 2_000,
                                   mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        limits.compareWindowBytes = 4096
        limits.dumpBytes = dumpBytes
        return limits
    }

    final class Recorder: DumpSink, @unchecked Sendable {
        var requests: [DumpRequest] = []
        func submit(_ request: DumpRequest) { requests.append(request) }
    }

    private func play(_ io: FakeSessionIO, request: [UInt8], main: [UInt8], mirror: [[UInt8]]) {
        io.connectAll()
        io.context.nowUs = 10
        io.completeRecv(.client, request)
        io.flushAllSends()
        io.context.nowUs = 20
        io.completeRecv(.main, main)
        io.flushAllSends()
        io.context.nowUs = 30
        for piece in mirror {
            if io.hasPending(.recv, .mirror(0)) { io.completeRecv(.mirror(0), piece) } else { io.completeDiscard(.mirror(0), result: Int32(piece.count)) }
        }
        io.completeEOF(.client)
        io.flushAllSends()
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        if io.hasPending(.recv, .mirror(0)) { io.completeEOF(.mirror(0)) } else { io.completeDiscard(.mirror(0), result: 0) }
        io.completeEOF(.main)
        io.flushAllSends()
        io.context.nowUs = 40
        io.completeShutdown(.client)
    }

    @Test("a diverged pair hands one dump request with the session's bytes, its replies read past the divergence")
    func divergedPairIsDumped() throws {
        let io = try FakeSessionIO(limits: Self.limits(dumpBytes: 1 << 20))
        let recorder = Recorder()
        io.context.dumpSink = recorder
        io.clientAddresses = ProxyAddresses(source: address("10.1.2.3", 5555), destination: address("10.1.2.4", 8080))
        io.context.nowUs = 5
        try #require(io.start() != nil)
        play(io, request: TestBytes.text("GET /"), main: TestBytes.text("hello world"),
             mirror: [TestBytes.text("hellO"), TestBytes.text(" world")])
        io.expectQuiescent()
        #expect(io.stats.mirrors[0].comparisons.count(.diverged) == 1)
        try #require(recorder.requests.count == 1)
        let request = recorder.requests[0]
        #expect(request.verdict == .diverged && request.divergenceOffset == 4 && request.mirror == 0)
        #expect(request.client.bytes == TestBytes.text("GET /"))
        #expect(request.main.bytes == TestBytes.text("hello world"))
        #expect(request.mirrorReplies.bytes == TestBytes.text("hellO world"), "recorded after the verdict was decided")
        #expect(request.mirrorReplies.pieceEnds == [5, 11])
        #expect(request.client.pieceTimesUs == [10] && request.main.pieceTimesUs == [20])
        #expect(request.startUs == 5 && request.endUs == 40)
        #expect(request.clientAddresses?.source == address("10.1.2.3", 5555))
    }

    @Test("a matching pair hands nothing; a bound past which bytes are counted", arguments: [false, true])
    func matchAndBound(diverge: Bool) throws {
        let io = try FakeSessionIO(limits: Self.limits(dumpBytes: 4))
        let recorder = Recorder()
        io.context.dumpSink = recorder
        try #require(io.start() != nil)
        play(io, request: TestBytes.text("GET /"), main: TestBytes.text("hello"),
             mirror: [TestBytes.text(diverge ? "hellx" : "hello")])
        io.expectQuiescent()
        #expect(recorder.requests.count == (diverge ? 1 : 0))
        if let request = recorder.requests.first {
            #expect(request.client.bytes == TestBytes.text("GET ") && request.client.droppedBytes == 1)
            #expect(request.main.bytes == TestBytes.text("hell") && request.mirrorReplies.droppedBytes == 1)
        }
    }

    @Test("without --dump-dir a session has no recording")
    func offMeansNothing() throws {
        let io = try FakeSessionIO(limits: Self.limits(dumpBytes: 0))
        let session = try #require(io.start())
        #expect(session.recordingTap == nil)
        io.abort()
        io.completeCancelled()
        io.expectQuiescent()
    }

    // MARK: The writer

    private static func request(mirror: Int = 0) -> DumpRequest {
        var client = SessionRecording.Stream()
        client.bytes = TestBytes.text("ab")
        client.pieceEnds = [2]
        client.pieceTimesUs = [1]
        return DumpRequest(mirror: mirror, verdict: .shorter, divergenceOffset: 0, clientAddresses: nil, startUs: 0, endUs: 2,
                           client: client, main: client, mirrorReplies: SessionRecording.Stream())
    }

    private static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/dumps-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        return String(cString: made!)
    }

    private static func files(_ directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name.hasSuffix(".pcapng") { names.append(name) }
        }
        return names.sorted()
    }

    @Test("the writer writes mode 0600 files up to its limit and counts the rest")
    func writerLimitAndMode() throws {
        let directory = try Self.temporaryDirectory()
        let writer = try DumpWriter(directory: directory, maxFiles: 2, servers: [address("127.0.0.1", 1), address("127.0.0.1", 2)],
                                    mirrorNames: ["127.0.0.1:2"])
        try writer.start()
        for _ in 0..<3 { writer.submit(Self.request()) }
        writer.stop()
        let names = Self.files(directory)
        #expect(names.count == 2)
        #expect(writer.count(mirror: 0, .written) == 2)
        #expect(writer.count(mirror: 0, .skippedLimit) == 1)
        for name in names {
            var status = stat()
            #expect(stat(directory + "/" + name, &status) == 0)
            #expect(status.st_mode & 0o777 == 0o600)
            unlink(directory + "/" + name)
        }
        rmdir(directory)
    }

    @Test("a reload's --dump-max-files and --dump-queue bound the dumps submitted after it")
    func writerFollowsReload() throws {
        let directory = try Self.temporaryDirectory()
        let writer = try DumpWriter(directory: directory, maxFiles: 1, servers: [address("127.0.0.1", 1), address("127.0.0.1", 2)],
                                    mirrorNames: ["127.0.0.1:2"], queueBytesMax: Self.request().memoryBytes)
        // Not started: nothing leaves the queue, so the queue's bound shows too.
        writer.submit(Self.request())
        writer.submit(Self.request())
        #expect(writer.count(mirror: 0, .skippedLimit) == 1, "one file at most")
        writer.follow(maxFiles: 4, queueBytesMax: 2 * Self.request().memoryBytes)
        for _ in 0..<3 { writer.submit(Self.request()) }
        #expect(writer.count(mirror: 0, .skippedLimit) == 1, "three more files allowed")
        #expect(writer.count(mirror: 0, .droppedQueue) == 2, "two requests' bytes queued at most: one more fits")
        try writer.start()
        writer.stop()
        #expect(writer.count(mirror: 0, .written) == 2)
        for name in Self.files(directory) { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    @Test("a full queue drops without waiting, and counts; what was queued is written")
    func fullQueueDrops() throws {
        let directory = try Self.temporaryDirectory()
        // A bound of 16 such requests' bytes (--dump-queue).
        let queued = 16
        let writer = try DumpWriter(directory: directory, maxFiles: 100, servers: [address("127.0.0.1", 1), address("127.0.0.1", 2)],
                                    mirrorNames: ["127.0.0.1:2"], queueBytesMax: queued * Self.request().memoryBytes)
        // The thread is not started yet: nothing leaves the queue.
        for _ in 0..<(queued + 3) { writer.submit(Self.request()) }
        #expect(writer.count(mirror: 0, .droppedQueue) == 3)
        try writer.start()
        writer.stop()
        #expect(writer.count(mirror: 0, .written) == UInt64(queued))
        let names = Self.files(directory)
        #expect(names.count == queued)
        for name in names { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    @Test("a missing or unwritable dump directory is refused with one line")
    func badDirectory() throws {
        #expect(throws: ConfigError.self) {
            try DumpWriter(directory: "/nonexistent/dumps", maxFiles: 1, servers: [], mirrorNames: [])
        }
        #expect(throws: ConfigError.self) {
            try DumpWriter(directory: "/etc/hostname", maxFiles: 1, servers: [], mirrorNames: [])
        }
    }
}
