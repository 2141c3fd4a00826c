/// pcapng files (Wireshark, `tcpdump --pcapng`, our own dumps and
/// recordings): blocks of type, length, body, length. A Section Header
/// Block's byte-order magic sets the byte order of its section; Interface
/// Description Blocks give each interface its link type and timestamp
/// resolution (`if_tsresol`); packets come in Enhanced Packet Blocks,
/// Simple Packet Blocks (interface 0, no timestamp: the previous packet's
/// is used) and the obsolete Packet Block. Other blocks are skipped.
/// Pure, and never traps on any input.
public enum PcapngReader {
    public static let sectionHeaderType: UInt32 = 0x0A0D_0D0A
    static let byteOrderMagic: UInt32 = 0x1A2B_3C4D
    static let interfaceDescriptionType: UInt32 = 1
    static let obsoletePacketType: UInt32 = 2
    static let simplePacketType: UInt32 = 3
    static let enhancedPacketType: UInt32 = 6
    /// A block longer than this is corrupt.
    static let blockBytesMax = 1 << 26

    struct Interface {
        var linkType: UInt32
        var snapLength: Int
        /// Timestamp units per second.
        var unitsPerSecond: UInt64
    }

    public static func recognises(_ bytes: UnsafeRawBufferPointer) -> Bool {
        CaptureBytes(bytes).u32(0, bigEndian: false) == sectionHeaderType
    }

    public static func read(_ bytes: UnsafeRawBufferPointer) throws(CaptureError) -> CaptureContents {
        let reader = CaptureBytes(bytes)
        guard reader.u32(0, bigEndian: false) == sectionHeaderType else { throw CaptureError("not a pcapng file") }
        var contents = CaptureContents()
        var bigEndian = false
        var interfaces: [Interface] = []
        var lastTimeUs: UInt64 = 0
        var offset = 0
        while offset < reader.count {
            // The section header's length can only be read once its magic says the byte order.
            var type = reader.u32(offset, bigEndian: bigEndian)
            if type == sectionHeaderType {
                guard let magic = reader.u32(offset + 8, bigEndian: false) else {
                    contents.truncatedAtOffset = offset
                    break
                }
                if magic == byteOrderMagic { bigEndian = false }
                else if magic == byteOrderMagic.byteSwapped { bigEndian = true }
                else { throw CaptureError("corrupt pcapng file: a section header at byte \(offset) has no byte-order magic") }
                interfaces = []
                type = sectionHeaderType
            }
            guard let blockType = type, let length32 = reader.u32(offset + 4, bigEndian: bigEndian) else {
                contents.truncatedAtOffset = offset
                break
            }
            let length = Int(length32)
            guard length >= 12, length % 4 == 0, length <= blockBytesMax else {
                throw CaptureError("corrupt pcapng file: a block of \(length) bytes at byte \(offset)")
            }
            guard reader.has(offset, length) else {
                contents.truncatedAtOffset = offset
                break
            }
            guard reader.u32(offset + length - 4, bigEndian: bigEndian) == length32 else {
                throw CaptureError("corrupt pcapng file: the block at byte \(offset) does not end with its length")
            }
            let body = offset + 8
            let bodyLength = length - 12
            switch blockType {
            case sectionHeaderType:
                break
            case interfaceDescriptionType:
                guard let interface = interfaceDescription(reader, body, bodyLength, bigEndian) else {
                    throw CaptureError("corrupt pcapng file: an interface description at byte \(offset)")
                }
                interfaces.append(interface)
            case enhancedPacketType, obsoletePacketType:
                let isEnhanced = blockType == enhancedPacketType
                guard bodyLength >= 20,
                      let interfaceID = isEnhanced ? reader.u32(body, bigEndian: bigEndian)
                                                   : reader.u16(body, bigEndian: bigEndian).map(UInt32.init),
                      let high = reader.u32(body + 4, bigEndian: bigEndian),
                      let low = reader.u32(body + 8, bigEndian: bigEndian),
                      let captured = reader.u32(body + 12, bigEndian: bigEndian),
                      let original = reader.u32(body + 16, bigEndian: bigEndian),
                      Int(captured) <= bodyLength - 20
                else { throw CaptureError("corrupt pcapng file: a packet block at byte \(offset)") }
                guard Int(interfaceID) < interfaces.count else {
                    contents.skippedRecords += 1
                    break
                }
                let interface = interfaces[Int(interfaceID)]
                lastTimeUs = microseconds(UInt64(high) << 32 | UInt64(low), interface.unitsPerSecond)
                contents.packets.append(CapturedPacket(linkType: interface.linkType, timeUs: lastTimeUs, dataOffset: body + 20,
                                                       capturedLength: Int(captured),
                                                       originalLength: max(Int(original), Int(captured))))
            case simplePacketType:
                guard bodyLength >= 4, let original = reader.u32(body, bigEndian: bigEndian) else {
                    throw CaptureError("corrupt pcapng file: a simple packet block at byte \(offset)")
                }
                guard let interface = interfaces.first else {
                    contents.skippedRecords += 1
                    break
                }
                var captured = min(Int(original), bodyLength - 4)
                if interface.snapLength > 0 { captured = min(captured, interface.snapLength) }
                contents.packets.append(CapturedPacket(linkType: interface.linkType, timeUs: lastTimeUs, dataOffset: body + 4,
                                                       capturedLength: captured, originalLength: max(Int(original), captured)))
            default:
                contents.skippedRecords += 1
            }
            offset += length
        }
        return contents
    }

    /// Link type, snap length, and `if_tsresol` (option 9) among the options.
    static func interfaceDescription(_ reader: CaptureBytes, _ body: Int, _ bodyLength: Int, _ bigEndian: Bool) -> Interface? {
        guard bodyLength >= 8, let linkType = reader.u16(body, bigEndian: bigEndian),
              let snapLength = reader.u32(body + 4, bigEndian: bigEndian) else { return nil }
        var interface = Interface(linkType: UInt32(linkType), snapLength: Int(snapLength), unitsPerSecond: 1_000_000)
        var option = body + 8
        let end = body + bodyLength
        while option + 4 <= end {
            guard let code = reader.u16(option, bigEndian: bigEndian),
                  let length = reader.u16(option + 2, bigEndian: bigEndian) else { break }
            if code == 0 { break }
            if code == 9, length >= 1, let resolution = reader.u8(option + 4) {
                let exponent = UInt64(resolution & 0x7F)
                let base: UInt64 = resolution & 0x80 == 0 ? 10 : 2
                // Beyond 10^19 or 2^63 units a second a timestamp cannot be held: refuse the interface.
                guard exponent <= (base == 10 ? 19 : 63) else { return nil }
                var units: UInt64 = 1
                for _ in 0..<exponent { units &*= base }
                interface.unitsPerSecond = units
            }
            option += 4 + (Int(length) + 3) / 4 * 4
        }
        return interface
    }

    static func microseconds(_ timestamp: UInt64, _ unitsPerSecond: UInt64) -> UInt64 {
        if unitsPerSecond == 1_000_000 { return timestamp }
        let seconds = timestamp / unitsPerSecond
        let fraction = timestamp % unitsPerSecond
        // fraction < unitsPerSecond: times 1e6 may overflow for fine units, so scale in two steps.
        let fractionUs = unitsPerSecond > 1_000_000
            ? fraction / (unitsPerSecond / 1_000_000 + (unitsPerSecond % 1_000_000 == 0 ? 0 : 1))
            : fraction * 1_000_000 / unitsPerSecond
        return seconds &* 1_000_000 &+ fractionUs
    }
}
