import Duplicator

/// From a captured packet to its TCP segment: the link layer (Ethernet with
/// VLAN tags, Linux cooked SLL and SLL2, raw IP, BSD loopback/NULL), then
/// IPv4 (no fragments) or IPv6 (extension headers walked), then TCP. A
/// packet that is not TCP over IP says why (`Skip`), to be counted.
public enum PacketDecoder {
    public enum LinkType {
        public static let null: UInt32 = 0
        public static let ethernet: UInt32 = 1
        /// DLT_RAW as some systems number it in classic pcap files.
        public static let rawBSD: UInt32 = 12
        public static let rawOpenBSD: UInt32 = 14
        public static let raw: UInt32 = 101
        public static let loop: UInt32 = 108
        public static let linuxCooked: UInt32 = 113
        public static let ipv4: UInt32 = 228
        public static let ipv6: UInt32 = 229
        public static let linuxCooked2: UInt32 = 276
    }

    public enum Skip: Int, Sendable, CaseIterable {
        /// A link type this reader does not know.
        case linkType
        /// Not IPv4 or IPv6 (ARP, ...).
        case notIP
        /// IP, but not TCP (UDP, ICMP, ...).
        case notTCP
        /// An IPv4 or IPv6 fragment: not reassembled.
        case fragment
        /// The headers themselves are cut or inconsistent.
        case malformed
    }

    static let etherTypeIPv4: UInt16 = 0x0800
    static let etherTypeIPv6: UInt16 = 0x86DD

    public static func decode(_ packet: CapturedPacket, in bytes: UnsafeRawBufferPointer) -> Result<TCPSegment, SkipReason> {
        let reader = CaptureBytes(bytes)
        guard reader.has(packet.dataOffset, packet.capturedLength) else { return .failure(SkipReason(.malformed)) }
        let start = packet.dataOffset
        let end = start + packet.capturedLength
        let networkStart: Int
        var etherType: UInt16?
        switch packet.linkType {
        case LinkType.ethernet:
            var offset = start + 12
            var type = reader.u16(offset, bigEndian: true)
            // 802.1Q and 802.1ad tags: four bytes each before the real type.
            while type == 0x8100 || type == 0x88A8 || type == 0x9100 {
                offset += 4
                type = reader.u16(offset, bigEndian: true)
            }
            etherType = type
            networkStart = offset + 2
        case LinkType.linuxCooked:
            etherType = reader.u16(start + 14, bigEndian: true)
            networkStart = start + 16
        case LinkType.linuxCooked2:
            etherType = reader.u16(start, bigEndian: true)
            networkStart = start + 20
        case LinkType.raw, LinkType.rawBSD, LinkType.rawOpenBSD, LinkType.ipv4, LinkType.ipv6:
            networkStart = start
        case LinkType.null, LinkType.loop:
            // The family in the host's byte order (NULL) or the network's (LOOP); AF_INET is 2,
            // AF_INET6 is 10, 24, 28 or 30 depending on the system that wrote it.
            guard let little = reader.u32(start, bigEndian: packet.linkType == LinkType.loop) else {
                return .failure(SkipReason(.malformed))
            }
            let family = little > 0xFFFF ? little.byteSwapped : little
            switch family {
            case 2: etherType = etherTypeIPv4
            case 10, 24, 28, 30: etherType = etherTypeIPv6
            default: return .failure(SkipReason(.notIP))
            }
            networkStart = start + 4
        default:
            return .failure(SkipReason(.linkType, linkType: packet.linkType))
        }
        guard networkStart <= end else { return .failure(SkipReason(.malformed)) }
        if let etherType, etherType != etherTypeIPv4, etherType != etherTypeIPv6 { return .failure(SkipReason(.notIP)) }
        // The bytes the wire had past what was captured, for the snap-length check.
        let cutBytes = packet.originalLength - packet.capturedLength
        return decodeIP(reader, networkStart, end, cutBytes: cutBytes, timeUs: packet.timeUs)
    }

    static func decodeIP(_ reader: CaptureBytes, _ start: Int, _ end: Int, cutBytes: Int, timeUs: UInt64) -> Result<TCPSegment, SkipReason> {
        guard let first = reader.u8(start) else { return .failure(SkipReason(.malformed)) }
        let source: ProxyAddress
        let destination: ProxyAddress
        var transportStart: Int
        /// Where the IP packet ends by its own length (before any link-layer padding), as captured or not.
        var ipEnd: Int
        switch first >> 4 {
        case 4:
            let headerLength = Int(first & 0x0F) * 4
            guard headerLength >= 20, start + headerLength <= end,
                  let totalLength = reader.u16(start + 2, bigEndian: true),
                  let fragment = reader.u16(start + 6, bigEndian: true),
                  let protocolNumber = reader.u8(start + 9) else { return .failure(SkipReason(.malformed)) }
            guard protocolNumber == 6 else { return .failure(SkipReason(.notTCP)) }
            // More fragments, or an offset: a piece of a datagram.
            guard fragment & 0x3FFF == 0 else { return .failure(SkipReason(.fragment)) }
            source = ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(rebasing: reader.bytes[(start + 12)..<(start + 16)]), port: 0)
            destination = ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(rebasing: reader.bytes[(start + 16)..<(start + 20)]), port: 0)
            transportStart = start + headerLength
            // A TSO/GRO packet captured on the host can carry 0 here: its length is then what was captured.
            ipEnd = totalLength == 0 ? end + cutBytes : start + Int(totalLength)
            guard ipEnd >= transportStart else { return .failure(SkipReason(.malformed)) }
        case 6:
            guard start + 40 <= end, let payloadLength = reader.u16(start + 4, bigEndian: true),
                  var next = reader.u8(start + 6) else { return .failure(SkipReason(.malformed)) }
            source = ProxyAddress(family: .ipv6, networkBytes: UnsafeRawBufferPointer(rebasing: reader.bytes[(start + 8)..<(start + 24)]), port: 0)
            destination = ProxyAddress(family: .ipv6, networkBytes: UnsafeRawBufferPointer(rebasing: reader.bytes[(start + 24)..<(start + 40)]), port: 0)
            transportStart = start + 40
            ipEnd = payloadLength == 0 ? end + cutBytes : transportStart + Int(payloadLength)
            // Hop-by-hop, routing, destination options: skipped; a fragment header: not reassembled.
            var hops = 0
            while next != 6 {
                hops += 1
                guard hops <= 8 else { return .failure(SkipReason(.malformed)) }
                switch next {
                case 0, 43, 60:
                    guard let following = reader.u8(transportStart), let length = reader.u8(transportStart + 1),
                          transportStart + 8 * (Int(length) + 1) <= end else { return .failure(SkipReason(.malformed)) }
                    next = following
                    transportStart += 8 * (Int(length) + 1)
                case 44: return .failure(SkipReason(.fragment))
                default: return .failure(SkipReason(.notTCP))
                }
            }
        default:
            return .failure(SkipReason(.notIP))
        }
        guard let sourcePort = reader.u16(transportStart, bigEndian: true),
              let destinationPort = reader.u16(transportStart + 2, bigEndian: true),
              let sequence = reader.u32(transportStart + 4, bigEndian: true),
              let acknowledgement = reader.u32(transportStart + 8, bigEndian: true),
              let offsetByte = reader.u8(transportStart + 12),
              let flags = reader.u8(transportStart + 13) else { return .failure(SkipReason(.malformed)) }
        let tcpHeaderLength = Int(offsetByte >> 4) * 4
        let payloadStart = transportStart + tcpHeaderLength
        guard tcpHeaderLength >= 20, payloadStart <= end, payloadStart <= ipEnd else { return .failure(SkipReason(.malformed)) }
        // Captured payload: up to the IP packet's end (dropping Ethernet padding) or the capture's.
        let payloadLength = min(ipEnd, end) - payloadStart
        let payloadBytesCut = max(0, ipEnd - end)
        var sourceAddress = source
        sourceAddress.port = sourcePort
        var destinationAddress = destination
        destinationAddress.port = destinationPort
        return .success(TCPSegment(source: sourceAddress, destination: destinationAddress, sequence: sequence,
                                   acknowledgement: acknowledgement, flags: TCPSegment.Flags(rawValue: flags & 0x3F),
                                   timeUs: timeUs, payloadOffset: payloadStart, payloadLength: payloadLength,
                                   payloadBytesCut: payloadBytesCut))
    }

    /// Why a packet gave no segment; with `.linkType`, which link type.
    public struct SkipReason: Error, Sendable, Equatable {
        public var skip: Skip
        public var linkType: UInt32?
        init(_ skip: Skip, linkType: UInt32? = nil) {
            self.skip = skip
            self.linkType = linkType
        }
    }
}
