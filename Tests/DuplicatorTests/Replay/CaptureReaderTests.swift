import Testing
@testable import Duplicator
@testable import Replay

// The capture readers (classic pcap, pcapng) and the packet decoder: every
// byte order, timestamp unit and link layer they claim, and the bad input
// they must refuse in one line or count.

private let client = CaptureFixture.address("10.0.0.1", 40000)
private let server = CaptureFixture.address("10.0.0.2", 6379)
private let exchanges = [("PING\r\n", "+PONG\r\n"), ("GET a\r\n", "$-1\r\n")]

private func streams(_ file: [UInt8], serverPort: UInt16? = nil) throws -> [(String, String)] {
    try CaptureFixture.assemble(file, serverPort: serverPort).sessions.map {
        (String(decoding: $0.clientBytes, as: UTF8.self), String(decoding: $0.serverBytes, as: UTF8.self))
    }
}

private let expected = [("PING\r\nGET a\r\n", "+PONG\r\n$-1\r\n")]

@Suite("CaptureReaderTests")
struct CaptureReaderTests {
    static let packets = CaptureFixture.packets([CaptureFixture.conversation(client: client, server: server, exchanges: exchanges)])

    @Test("classic pcap in both byte orders, micro- and nanoseconds", arguments: [false, true], [false, true])
    func pcapOrders(bigEndian: Bool, nanoseconds: Bool) throws {
        let file = CaptureFixture.pcap(Self.packets, bigEndian: bigEndian, nanoseconds: nanoseconds)
        let contents = try file.withUnsafeBytes { try CaptureFile.read($0) }
        #expect(contents.packets.count == Self.packets.count)
        #expect(contents.packets.map(\.timeUs) == Self.packets.map(\.timeUs))
        #expect(contents.truncatedAtOffset == nil)
        let got = try streams(file)
        #expect(got.count == 1 && got[0] == expected[0])
    }

    @Test("pcapng in both byte orders, microsecond and nanosecond interfaces, enhanced and simple blocks",
          arguments: [false, true], [false, true])
    func pcapngOrders(bigEndian: Bool, nanoseconds: Bool) throws {
        let file = CaptureFixture.pcapng(Self.packets, bigEndian: bigEndian, nanoseconds: nanoseconds)
        let contents = try file.withUnsafeBytes { try CaptureFile.read($0) }
        #expect(contents.packets.map(\.timeUs) == Self.packets.map(\.timeUs))
        #expect(contents.skippedRecords == 1)  // the unknown block
        #expect(try streams(file).map(\.0) == expected.map(\.0))
        // Simple packet blocks carry no time: the bytes still come out.
        let simple = CaptureFixture.pcapng(Self.packets, bigEndian: bigEndian, simple: true)
        let simpleContents = try simple.withUnsafeBytes { try CaptureFile.read($0) }
        #expect(simpleContents.packets.count == Self.packets.count)
    }

    @Test("our own dump encoder's files read back")
    func ownDumps() throws {
        let file = Pcapng.file([CaptureFixture.conversation(client: client, server: server, exchanges: exchanges)], comment: "x")
        let got = try streams(file)
        #expect(got.count == 1 && got[0] == expected[0])
    }

    @Test("every link layer", arguments: [CaptureFixture.Link.raw, .ethernet, .ethernetVLAN, .linuxCooked, .linuxCooked2, .null, .loop])
    func linkLayers(link: CaptureFixture.Link) throws {
        let got = try streams(CaptureFixture.pcap(Self.packets, link: link))
        #expect(got.count == 1 && got[0] == expected[0], "\(link)")
        let v6 = CaptureFixture.packets([CaptureFixture.conversation(client: CaptureFixture.address("fd00::1", 5000),
                                                                     server: CaptureFixture.address("fd00::2", 6379), exchanges: exchanges)])
        let got6 = try streams(CaptureFixture.pcapng(v6, link: link))
        #expect(got6.count == 1 && got6[0] == expected[0], "\(link) IPv6")
    }

    @Test("a file cut inside a record keeps the packets before it and says where")
    func truncated() throws {
        let file = CaptureFixture.pcap(Self.packets)
        let cut = Array(file.dropLast(3))
        let contents = try cut.withUnsafeBytes { try CaptureFile.read($0) }
        #expect(contents.packets.count == Self.packets.count - 1)
        #expect(contents.truncatedAtOffset != nil)
        let cutNg = Array(CaptureFixture.pcapng(Self.packets).dropLast(5))
        let contentsNg = try cutNg.withUnsafeBytes { try CaptureFile.read($0) }
        #expect(contentsNg.packets.count == Self.packets.count - 1 && contentsNg.truncatedAtOffset != nil)
        // Cut inside the global header: an error, not an empty capture.
        #expect(throws: CaptureError.self) { try Array(file.prefix(10)).withUnsafeBytes { try CaptureFile.read($0) } }
    }

    @Test("not a capture: one line that says so")
    func notACapture() throws {
        let text = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        #expect(throws: CaptureError.self) { try text.withUnsafeBytes { try CaptureFile.read($0) } }
        #expect(throws: CaptureError.self) { try [UInt8]().withUnsafeBytes { try CaptureFile.read($0) } }
        do {
            _ = try text.withUnsafeBytes { try CaptureFile.read($0) }
        } catch {
            #expect((error as? CaptureError)?.message.contains("not a pcap or pcapng") == true)
        }
    }

    @Test("a snap length that cut payloads: the session is skipped and counted")
    func snapLengthCut() throws {
        let result = try CaptureFixture.assemble(CaptureFixture.pcap(Self.packets, snapLength: 44))
        #expect(result.sessions.isEmpty)
        #expect(result.counts.skippedCut == 1)
        #expect(ReplayInput.notes(result.counts).contains { $0.contains("snap length") })
    }

    @Test("packets that are not TCP are counted by reason")
    func notTCP() throws {
        // A UDP datagram over IPv4, an ARP frame, a fragment.
        var udp: [UInt8] = [0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2] + [UInt8](repeating: 0, count: 8)
        let fragment: [UInt8] = [0x45, 0, 0, 40, 0, 0, 0x20, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2] + [UInt8](repeating: 0, count: 20)
        var file = CaptureFixture.pcap([(1, udp), (2, fragment)])
        var result = try CaptureFixture.assemble(file)
        #expect(result.counts.skipped(.notTCP) == 1 && result.counts.skipped(.fragment) == 1 && result.sessions.isEmpty)
        udp[0] = 0x35  // IP version 3
        file = CaptureFixture.pcap([(1, udp)])
        result = try CaptureFixture.assemble(file)
        #expect(result.counts.skipped(.notIP) == 1)
        let arp = CaptureFixture.pcap([(1, [UInt8](repeating: 0, count: 28))], link: .raw)
        #expect(try CaptureFixture.assemble(arp).counts.skipped(.malformed) + CaptureFixture.assemble(arp).counts.skipped(.notIP) == 1)
    }
}
