/// Classic libpcap files (tcpdump -w): a 24-byte global header whose magic
/// says the byte order and whether timestamps are micro- or nanoseconds,
/// then records of a 16-byte header and the captured bytes. Pure: reads
/// bytes already in memory, never traps on any input.
public enum PcapReader {
    public static let magicMicroseconds: UInt32 = 0xA1B2_C3D4
    public static let magicNanoseconds: UInt32 = 0xA1B2_3C4D
    static let globalHeaderBytes = 24
    static let recordHeaderBytes = 16
    /// A record longer than this is corrupt (libpcap's own bound is 256 KiB for most links).
    static let recordBytesMax = 1 << 24

    /// Whether `bytes` begins like a classic pcap file (either byte order).
    public static func recognises(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let reader = CaptureBytes(bytes)
        guard let magic = reader.u32(0, bigEndian: false) else { return false }
        return [magicMicroseconds, magicNanoseconds, magicMicroseconds.byteSwapped, magicNanoseconds.byteSwapped].contains(magic)
    }

    public static func read(_ bytes: UnsafeRawBufferPointer) throws(CaptureError) -> CaptureContents {
        let reader = CaptureBytes(bytes)
        guard let magic = reader.u32(0, bigEndian: false) else { throw CaptureError("not a capture file (too short)") }
        let bigEndian: Bool
        let nanoseconds: Bool
        switch magic {
        case magicMicroseconds: (bigEndian, nanoseconds) = (false, false)
        case magicNanoseconds: (bigEndian, nanoseconds) = (false, true)
        case magicMicroseconds.byteSwapped: (bigEndian, nanoseconds) = (true, false)
        case magicNanoseconds.byteSwapped: (bigEndian, nanoseconds) = (true, true)
        default: throw CaptureError("not a pcap file (magic \(hex(magic)))")
        }
        guard let major = reader.u16(4, bigEndian: bigEndian), let network = reader.u32(20, bigEndian: bigEndian) else {
            throw CaptureError("truncated pcap file: the 24-byte header is cut")
        }
        guard major == 2 else { throw CaptureError("pcap version \(major) is not 2") }
        // The upper bits of the link type field carry FCS information (pcap-linktype(7)).
        let linkType = network & 0x03FF_FFFF
        var contents = CaptureContents()
        var offset = globalHeaderBytes
        while offset < reader.count {
            guard let seconds = reader.u32(offset, bigEndian: bigEndian),
                  let fraction = reader.u32(offset + 4, bigEndian: bigEndian),
                  let captured = reader.u32(offset + 8, bigEndian: bigEndian),
                  let original = reader.u32(offset + 12, bigEndian: bigEndian)
            else {
                contents.truncatedAtOffset = offset
                break
            }
            guard Int(captured) <= recordBytesMax else {
                throw CaptureError("corrupt pcap file: a record of \(captured) bytes at byte \(offset)")
            }
            let dataOffset = offset + recordHeaderBytes
            guard reader.has(dataOffset, Int(captured)) else {
                contents.truncatedAtOffset = offset
                break
            }
            let fractionUs = nanoseconds ? UInt64(fraction) / 1000 : UInt64(fraction)
            contents.packets.append(CapturedPacket(linkType: linkType, timeUs: UInt64(seconds) * 1_000_000 + fractionUs,
                                                   dataOffset: dataOffset, capturedLength: Int(captured),
                                                   originalLength: max(Int(original), Int(captured))))
            offset = dataOffset + Int(captured)
        }
        return contents
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
    }
}
