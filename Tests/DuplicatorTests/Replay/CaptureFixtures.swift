import Glibc
import TestSupport
@testable import Duplicator
@testable import Replay

/// Capture files built in memory for the reader and reassembly tests: the
/// dump encoder's packets (`Pcapng.packets(of:)`) under any link layer, in
/// classic pcap (either byte order, micro- or nanoseconds) or pcapng, and
/// a rewrite that reorders and duplicates a capture's packets.
enum CaptureFixture {
    typealias Packet = (timeUs: UInt64, bytes: [UInt8])

    static func address(_ text: String, _ port: UInt16) -> ProxyAddress {
        if text.contains(":") {
            var raw = in6_addr()
            precondition(inet_pton(AF_INET6, text, &raw) == 1)
            return withUnsafeBytes(of: raw) { ProxyAddress(family: .ipv6, networkBytes: $0, port: port) }
        }
        var raw = in_addr()
        precondition(inet_pton(AF_INET, text, &raw) == 1)
        return withUnsafeBytes(of: raw) { ProxyAddress(family: .ipv4, networkBytes: $0, port: port) }
    }

    /// A conversation of request/reply exchanges, 100 µs apart, from `startUs`.
    static func conversation(client: ProxyAddress, server: ProxyAddress, exchanges: [(String, String)],
                             startUs: UInt64 = 1_700_000_000_000_000) -> Pcapng.Conversation {
        var clientSegments: [Pcapng.Segment] = []
        var serverSegments: [Pcapng.Segment] = []
        var time = startUs + 100
        for (request, reply) in exchanges {
            if !request.isEmpty { clientSegments.append(Pcapng.Segment(timeUs: time, bytes: Array(request.utf8))) }
            time += 50
            if !reply.isEmpty { serverSegments.append(Pcapng.Segment(timeUs: time, bytes: Array(reply.utf8))) }
            time += 50
        }
        return Pcapng.Conversation(client: client, server: server, clientSegments: clientSegments,
                                   serverSegments: serverSegments, startUs: startUs, endUs: time)
    }

    /// IP packets of the conversations, in time order.
    static func packets(_ conversations: [Pcapng.Conversation]) -> [Packet] {
        var all: [Packet] = []
        for conversation in conversations { Pcapng.packets(of: conversation) { all.append(($0, $1)) } }
        return all.enumerated().sorted { ($0.element.timeUs, $0.offset) < ($1.element.timeUs, $1.offset) }.map(\.element)
    }

    enum Link {
        case raw, ethernet, ethernetVLAN, linuxCooked, linuxCooked2, null, loop

        var linkType: UInt32 {
            switch self {
            case .raw: 101
            case .ethernet, .ethernetVLAN: 1
            case .linuxCooked: 113
            case .linuxCooked2: 276
            case .null: 0
            case .loop: 108
            }
        }

        func frame(_ ip: [UInt8]) -> [UInt8] {
            let isIPv6 = ip.first.map { $0 >> 4 == 6 } ?? false
            let etherType: [UInt8] = isIPv6 ? [0x86, 0xDD] : [0x08, 0x00]
            switch self {
            case .raw: return ip
            case .ethernet: return [UInt8](repeating: 0xAA, count: 12) + etherType + ip
            case .ethernetVLAN: return [UInt8](repeating: 0xAA, count: 12) + [0x81, 0x00, 0x00, 0x07] + etherType + ip
            case .linuxCooked: return [0, 0, 0, 1, 0, 6] + [UInt8](repeating: 0, count: 8) + etherType + ip
            case .linuxCooked2: return etherType + [0, 0, 0, 0, 0, 1, 0, 1, 0, 6] + [UInt8](repeating: 0, count: 8) + ip
            case .null: return (isIPv6 ? [30, 0, 0, 0] : [2, 0, 0, 0]) + ip
            case .loop: return (isIPv6 ? [0, 0, 0, 30] : [0, 0, 0, 2]) + ip
            }
        }
    }

    static func put(_ value: UInt32, _ bigEndian: Bool, _ out: inout [UInt8]) {
        let ordered = bigEndian ? value.bigEndian : value.littleEndian
        withUnsafeBytes(of: ordered) { out += $0 }
    }

    static func put16(_ value: UInt16, _ bigEndian: Bool, _ out: inout [UInt8]) {
        let ordered = bigEndian ? value.bigEndian : value.littleEndian
        withUnsafeBytes(of: ordered) { out += $0 }
    }

    /// A classic pcap file of `packets` (IP packets framed by `link`), each cut to `snapLength`.
    static func pcap(_ packets: [Packet], link: Link = .raw, bigEndian: Bool = false, nanoseconds: Bool = false,
                     snapLength: Int = 262_144) -> [UInt8] {
        var out: [UInt8] = []
        put(nanoseconds ? PcapReader.magicNanoseconds : PcapReader.magicMicroseconds, bigEndian, &out)
        put16(2, bigEndian, &out)
        put16(4, bigEndian, &out)
        put(0, bigEndian, &out)
        put(0, bigEndian, &out)
        put(UInt32(snapLength), bigEndian, &out)
        put(link.linkType, bigEndian, &out)
        for packet in packets { record(link.frame(packet.bytes), timeUs: packet.timeUs, bigEndian: bigEndian, nanoseconds: nanoseconds, snapLength: snapLength, &out) }
        return out
    }

    static func record(_ frame: [UInt8], timeUs: UInt64, bigEndian: Bool, nanoseconds: Bool, snapLength: Int, _ out: inout [UInt8]) {
        let captured = Array(frame.prefix(snapLength))
        put(UInt32(timeUs / 1_000_000), bigEndian, &out)
        put(UInt32(timeUs % 1_000_000) * (nanoseconds ? 1000 : 1), bigEndian, &out)
        put(UInt32(captured.count), bigEndian, &out)
        put(UInt32(frame.count), bigEndian, &out)
        out += captured
    }

    /// A pcapng file: one section, one interface (`link`), enhanced packet
    /// blocks (or simple ones), timestamps in nanoseconds when asked (`if_tsresol` 9).
    static func pcapng(_ packets: [Packet], link: Link = .raw, bigEndian: Bool = false, nanoseconds: Bool = false,
                       simple: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        func block(_ type: UInt32, _ body: [UInt8]) {
            var body = body
            while body.count % 4 != 0 { body.append(0) }
            put(type, bigEndian, &out)
            put(UInt32(12 + body.count), bigEndian, &out)
            out += body
            put(UInt32(12 + body.count), bigEndian, &out)
        }
        var header: [UInt8] = []
        put(0x1A2B_3C4D, bigEndian, &header)
        put16(1, bigEndian, &header)
        put16(0, bigEndian, &header)
        header += [UInt8](repeating: 0xFF, count: 8)
        block(0x0A0D_0D0A, header)
        var interface: [UInt8] = []
        put16(UInt16(link.linkType), bigEndian, &interface)
        put16(0, bigEndian, &interface)
        put(0, bigEndian, &interface)
        if nanoseconds {
            put16(9, bigEndian, &interface)
            put16(1, bigEndian, &interface)
            interface += [9, 0, 0, 0]
            put(0, bigEndian, &interface)
        }
        block(1, interface)
        // A block of a type the reader does not know: skipped.
        block(0x0000_0BAD, [1, 2, 3, 4])
        for packet in packets {
            let frame = link.frame(packet.bytes)
            var body: [UInt8] = []
            if simple {
                put(UInt32(frame.count), bigEndian, &body)
                body += frame
                block(3, body)
                continue
            }
            let time = nanoseconds ? packet.timeUs * 1000 : packet.timeUs
            put(0, bigEndian, &body)
            put(UInt32(time >> 32), bigEndian, &body)
            put(UInt32(time & 0xFFFF_FFFF), bigEndian, &body)
            put(UInt32(frame.count), bigEndian, &body)
            put(UInt32(frame.count), bigEndian, &body)
            body += frame
            block(6, body)
        }
        return out
    }

    /// The same capture with its packets reordered (each moved up to
    /// `window` places) and about one in four sent twice, timestamps kept:
    /// what a capture of a lossy path with retransmissions looks like.
    static func rewriteReorderedWithDuplicates(_ pcapBytes: [UInt8], seed: UInt64, window: Int = 6) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        let contents = try! pcapBytes.withUnsafeBytes { try PcapReader.read($0) }
        var records: [(timeUs: UInt64, frame: [UInt8])] = contents.packets.map {
            ($0.timeUs, Array(pcapBytes[$0.dataOffset..<($0.dataOffset + $0.capturedLength)]))
        }
        var index = 0
        while index < records.count {
            let other = min(records.count - 1, index + Int.random(in: 0...window, using: &generator))
            records.swapAt(index, other)
            index += 1
        }
        var rewritten: [(timeUs: UInt64, frame: [UInt8])] = []
        for record in records {
            rewritten.append(record)
            if Int.random(in: 0..<4, using: &generator) == 0 {
                rewritten.insert(record, at: max(0, rewritten.count - Int.random(in: 1...3, using: &generator)))
            }
        }
        var out = Array(pcapBytes[0..<24])
        for record in rewritten {
            Self.record(record.frame, timeUs: record.timeUs, bigEndian: false, nanoseconds: false, snapLength: 1 << 20, &out)
        }
        return out
    }

    /// The sessions of a file, through the same path as `duplicator replay`.
    static func assemble(_ file: [UInt8], serverPort: UInt16? = nil) throws -> (sessions: [RecordedSession], counts: CaptureAssembler.Counts) {
        var assembler = CaptureAssembler(serverPort: serverPort)
        try file.withUnsafeBytes { raw in
            let contents = try CaptureFile.read(raw)
            assembler.add(contents, bytes: raw)
        }
        let sessions = assembler.finish()
        return (sessions, assembler.counts)
    }
}
