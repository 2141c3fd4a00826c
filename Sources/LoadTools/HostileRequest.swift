/// The bytes hostile connections send.
///
/// The large request is one '\n'-terminated message, as the echo load's are, made of a
/// printable pattern with no other '\n'. The slowloris trickle is the same pattern
/// without any '\n' at all, so a line-based server never sees a message complete.
enum HostileRequest {
    /// The byte at `offset` of the pattern: '!'...'y', never '\n'.
    static func patternByte(at offset: Int) -> UInt8 {
        UInt8(ascii: "!") + UInt8(offset % 89)
    }

    /// Fills `buffer` with a request of `buffer.count` bytes: the pattern, then '\n'.
    static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard !buffer.isEmpty else { return }
        for offset in 0..<buffer.count - 1 {
            buffer[offset] = patternByte(at: offset)
        }
        buffer[buffer.count - 1] = UInt8(ascii: "\n")
    }
}
