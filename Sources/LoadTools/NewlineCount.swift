import Glibc

/// Counts '\n' bytes with memchr (vectorised in glibc), for when no digest is computed
/// on the same pass anyway.
enum NewlineCount {
    static func count(in bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard var cursor = bytes.baseAddress else { return 0 }
        let end = cursor + bytes.count
        var newlines: UInt64 = 0
        while cursor < end, let found = memchr(cursor, Int32(UInt8(ascii: "\n")), end - cursor) {
            newlines += 1
            cursor = UnsafeRawPointer(found) + 1
        }
        return newlines
    }
}
