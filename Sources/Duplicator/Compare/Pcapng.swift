/// A pcapng file of TCP conversations rebuilt from their byte streams: a
/// pure encoder (no IO), for `--dump-dir`.
///
/// Layout: one Section Header Block (with a comment saying what the file
/// holds and what was not recorded), one Interface Description Block of
/// LINKTYPE_RAW (packets begin with their IPv4 or IPv6 header, no link
/// layer; snaplen 0: unlimited; timestamps in microseconds, the default),
/// then one Enhanced Packet Block per packet, all conversations' packets
/// in one time order. Per conversation: a
/// synthetic handshake (SYN, SYN-ACK, ACK) at its start, each recorded
/// piece of either stream as PSH-ACK segments (at most `segmentBytesMax`
/// each) at its arrival time with consistent sequence and acknowledgement
/// numbers, then FIN-ACK from each side and the last ACK at its end. IPv4
/// and TCP checksums are computed, so tools show no checksum errors.
/// Everything little-endian (the section's byte-order magic says so).
public enum Pcapng {
    /// Bytes of one stream that arrived together, at `timeUs` (microseconds since the epoch).
    public struct Segment: Sendable, Equatable {
        public var timeUs: UInt64
        public var bytes: [UInt8]
        public init(timeUs: UInt64, bytes: [UInt8]) {
            self.timeUs = timeUs
            self.bytes = bytes
        }
    }

    public struct Conversation: Sendable {
        public var client: ProxyAddress
        public var server: ProxyAddress
        /// The client's bytes to the server, and the server's replies, each in order.
        public var clientSegments: [Segment]
        public var serverSegments: [Segment]
        /// The handshake's and the FINs' times.
        public var startUs: UInt64
        public var endUs: UInt64

        public init(client: ProxyAddress, server: ProxyAddress, clientSegments: [Segment], serverSegments: [Segment],
                    startUs: UInt64, endUs: UInt64) {
            self.client = client
            self.server = server
            self.clientSegments = clientSegments
            self.serverSegments = serverSegments
            self.startUs = startUs
            self.endUs = endUs
        }
    }

    public static let linktypeRaw: UInt16 = 101
    /// The most payload one synthetic TCP segment carries.
    public static let segmentBytesMax = 32 * 1024
    static let clientInitialSequence: UInt32 = 0x1000_0000
    static let serverInitialSequence: UInt32 = 0x2000_0000

    /// The whole file.
    public static func file(_ conversations: [Conversation], comment: String? = nil) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4096 + conversations.reduce(0) { sum, conversation in
            sum + (conversation.clientSegments + conversation.serverSegments).reduce(0) { $0 + $1.bytes.count + 128 }
        })
        sectionHeader(comment: comment, into: &out)
        interfaceDescription(into: &out)
        // All conversations' packets in one time order (each conversation's
        // own order kept on a tie), as a capture would have them.
        var all: [(timeUs: UInt64, order: Int, packet: [UInt8])] = []
        for conversation in conversations {
            packets(of: conversation) { timeUs, packet in all.append((timeUs, all.count, packet)) }
        }
        all.sort { ($0.timeUs, $0.order) < ($1.timeUs, $1.order) }
        for entry in all { enhancedPacket(timeUs: entry.timeUs, packet: entry.packet, into: &out) }
        return out
    }

    // MARK: Blocks

    static func sectionHeader(comment: String?, into out: inout [UInt8]) {
        var body: [UInt8] = []
        put32(0x1A2B_3C4D, &body)  // byte-order magic
        put16(1, &body)  // major
        put16(0, &body)  // minor
        put64(UInt64.max, &body)  // section length: not given
        if let comment { option(1, Array(comment.utf8), &body) }  // opt_comment
        if comment != nil { put32(0, &body) }  // opt_endofopt
        block(0x0A0D_0D0A, body, &out)
    }

    static func interfaceDescription(into out: inout [UInt8]) {
        var body: [UInt8] = []
        put16(linktypeRaw, &body)
        put16(0, &body)
        put32(0, &body)  // snaplen: unlimited
        block(1, body, &out)
    }

    static func enhancedPacket(timeUs: UInt64, packet: [UInt8], into out: inout [UInt8]) {
        var body: [UInt8] = []
        body.reserveCapacity(20 + packet.count + 3)
        put32(0, &body)  // interface 0
        put32(UInt32(truncatingIfNeeded: timeUs >> 32), &body)
        put32(UInt32(truncatingIfNeeded: timeUs), &body)
        put32(UInt32(packet.count), &body)  // captured
        put32(UInt32(packet.count), &body)  // original
        body += packet
        pad(&body)
        block(6, body, &out)
    }

    /// Type, total length, body (padded to 4), total length again.
    static func block(_ type: UInt32, _ body: [UInt8], _ out: inout [UInt8]) {
        var body = body
        pad(&body)
        let total = UInt32(12 + body.count)
        put32(type, &out)
        put32(total, &out)
        out += body
        put32(total, &out)
    }

    static func option(_ code: UInt16, _ value: [UInt8], _ out: inout [UInt8]) {
        put16(code, &out)
        put16(UInt16(value.count), &out)
        out += value
        pad(&out)
    }

    // MARK: Packets

    struct TCPFlags {
        static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, psh: UInt8 = 0x08, ack: UInt8 = 0x10
    }

    /// One conversation's packets, in time order (client first on a tie).
    static func packets(of conversation: Conversation, _ emitPacket: (UInt64, [UInt8]) -> Void) {
        // One family for both ends: an IPv4 client of an IPv6 server is shown IPv4-mapped.
        var client = conversation.client.unmapped
        var server = conversation.server.unmapped
        if client.family != server.family {
            client = client.mapped
            server = server.mapped
        }
        var clientNext = clientInitialSequence &+ 1
        var serverNext = serverInitialSequence &+ 1
        func emit(_ fromClient: Bool, _ timeUs: UInt64, _ flags: UInt8, seq: UInt32, ack: UInt32, _ payload: ArraySlice<UInt8>) {
            let packet = fromClient
                ? ipPacket(source: client, destination: server, seq: seq, ack: ack, flags: flags, payload: payload)
                : ipPacket(source: server, destination: client, seq: seq, ack: ack, flags: flags, payload: payload)
            emitPacket(timeUs, packet)
        }
        let start = conversation.startUs
        emit(true, start, TCPFlags.syn, seq: clientInitialSequence, ack: 0, [])
        emit(false, start, TCPFlags.syn | TCPFlags.ack, seq: serverInitialSequence, ack: clientNext, [])
        emit(true, start, TCPFlags.ack, seq: clientNext, ack: serverNext, [])
        var clientIndex = 0
        var serverIndex = 0
        var lastUs = start
        let clientSegments = conversation.clientSegments
        let serverSegments = conversation.serverSegments
        while clientIndex < clientSegments.count || serverIndex < serverSegments.count {
            let fromClient = serverIndex == serverSegments.count
                || (clientIndex < clientSegments.count && clientSegments[clientIndex].timeUs <= serverSegments[serverIndex].timeUs)
            let segment = fromClient ? clientSegments[clientIndex] : serverSegments[serverIndex]
            if fromClient { clientIndex += 1 } else { serverIndex += 1 }
            let timeUs = max(segment.timeUs, lastUs)
            lastUs = timeUs
            var offset = 0
            while offset < segment.bytes.count {
                let end = min(segment.bytes.count, offset + segmentBytesMax)
                let payload = segment.bytes[offset..<end]
                if fromClient {
                    emit(true, timeUs, TCPFlags.psh | TCPFlags.ack, seq: clientNext, ack: serverNext, payload)
                    clientNext &+= UInt32(payload.count)
                } else {
                    emit(false, timeUs, TCPFlags.psh | TCPFlags.ack, seq: serverNext, ack: clientNext, payload)
                    serverNext &+= UInt32(payload.count)
                }
                offset = end
            }
        }
        let end = max(conversation.endUs, lastUs)
        emit(true, end, TCPFlags.fin | TCPFlags.ack, seq: clientNext, ack: serverNext, [])
        clientNext &+= 1
        emit(false, end, TCPFlags.fin | TCPFlags.ack, seq: serverNext, ack: clientNext, [])
        serverNext &+= 1
        emit(true, end, TCPFlags.ack, seq: clientNext, ack: serverNext, [])
    }

    /// An IPv4 or IPv6 packet (both addresses of one family) with one TCP segment.
    static func ipPacket(source: ProxyAddress, destination: ProxyAddress, seq: UInt32, ack: UInt32, flags: UInt8,
                         payload: ArraySlice<UInt8>) -> [UInt8] {
        let sourceBytes = addressBytes(source)
        let destinationBytes = addressBytes(destination)
        var tcp: [UInt8] = []
        tcp.reserveCapacity(20 + payload.count)
        putBE16(source.port, &tcp)
        putBE16(destination.port, &tcp)
        putBE32(seq, &tcp)
        putBE32(ack, &tcp)
        tcp.append(5 << 4)  // data offset: 5 words, no options
        tcp.append(flags)
        putBE16(65535, &tcp)  // window
        putBE16(0, &tcp)  // checksum, below
        putBE16(0, &tcp)  // urgent pointer
        tcp += payload
        // The pseudo-header: addresses, protocol 6, TCP length.
        var sum: UInt32 = 0
        sum = checksumAdd(sum, sourceBytes[...])
        sum = checksumAdd(sum, destinationBytes[...])
        sum &+= 6 &+ UInt32(tcp.count & 0xFFFF) &+ UInt32(tcp.count >> 16)
        sum = checksumAdd(sum, tcp[...])
        let tcpChecksum = checksumFold(sum)
        tcp[16] = UInt8(tcpChecksum >> 8)
        tcp[17] = UInt8(tcpChecksum & 0xFF)

        var packet: [UInt8] = []
        if source.family == .ipv4 {
            packet.reserveCapacity(20 + tcp.count)
            packet.append(0x45)
            packet.append(0)
            putBE16(UInt16(truncatingIfNeeded: 20 + tcp.count), &packet)
            putBE16(0, &packet)  // identification
            putBE16(0x4000, &packet)  // don't fragment
            packet.append(64)  // TTL
            packet.append(6)  // TCP
            putBE16(0, &packet)  // checksum, below
            packet += sourceBytes
            packet += destinationBytes
            let headerChecksum = checksumFold(checksumAdd(0, packet[0..<20]))
            packet[10] = UInt8(headerChecksum >> 8)
            packet[11] = UInt8(headerChecksum & 0xFF)
        } else {
            packet.reserveCapacity(40 + tcp.count)
            putBE32(0x6000_0000, &packet)  // version 6, no class or flow label
            putBE16(UInt16(truncatingIfNeeded: tcp.count), &packet)
            packet.append(6)  // next header: TCP
            packet.append(64)  // hop limit
            packet += sourceBytes
            packet += destinationBytes
        }
        packet += tcp
        return packet
    }

    /// 4 (IPv4) or 16 (IPv6) bytes in network order.
    static func addressBytes(_ address: ProxyAddress) -> [UInt8] {
        withUnsafeBytes(of: address.networkWords) { Array($0.prefix(address.family == .ipv4 ? 4 : 16)) }
    }

    // MARK: Encoding helpers

    static func checksumAdd(_ sum: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
        var sum = sum
        var index = bytes.startIndex
        while index + 1 < bytes.endIndex {
            sum &+= UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
            if sum > 0xFFFF_0000 { sum = (sum & 0xFFFF) &+ (sum >> 16) }
            index += 2
        }
        if index < bytes.endIndex { sum &+= UInt32(bytes[index]) << 8 }
        return sum
    }

    static func checksumFold(_ sum: UInt32) -> UInt16 {
        var sum = sum
        while sum > 0xFFFF { sum = (sum & 0xFFFF) &+ (sum >> 16) }
        return ~UInt16(sum)
    }

    static func pad(_ out: inout [UInt8]) {
        while out.count % 4 != 0 { out.append(0) }
    }

    static func put16(_ value: UInt16, _ out: inout [UInt8]) {
        out.append(UInt8(value & 0xFF))
        out.append(UInt8(value >> 8))
    }

    static func put32(_ value: UInt32, _ out: inout [UInt8]) {
        for shift in stride(from: 0, to: 32, by: 8) { out.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    static func put64(_ value: UInt64, _ out: inout [UInt8]) {
        for shift in stride(from: 0, to: 64, by: 8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    static func putBE16(_ value: UInt16, _ out: inout [UInt8]) {
        out.append(UInt8(value >> 8))
        out.append(UInt8(value & 0xFF))
    }

    static func putBE32(_ value: UInt32, _ out: inout [UInt8]) {
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }
}
