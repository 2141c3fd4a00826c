/// The 64-bit FNV-1a hash, kept running over a byte stream.
///
/// Used as a cheap, order-sensitive digest of everything a test server received, so a
/// test can prove a stream arrived byte for byte without storing it.
public struct FNV1a64: Sendable, Hashable {
    public static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    public static let prime: UInt64 = 0x0000_0100_0000_01b3

    public private(set) var value: UInt64

    public init() { value = Self.offsetBasis }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var hash = value
        for byte in bytes {
            hash = (hash ^ UInt64(byte)) &* Self.prime
        }
        value = hash
    }

    public mutating func update<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
        var hash = value
        for byte in bytes {
            hash = (hash ^ UInt64(byte)) &* Self.prime
        }
        value = hash
    }

    /// Hashes `bytes` and returns how many of them are '\n'. One pass over the data:
    /// the server needs both and the multiply chain, not the compare, sets the pace.
    mutating func updateCountingNewlines(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash = value
        var newlines: UInt64 = 0
        for byte in bytes {
            hash = (hash ^ UInt64(byte)) &* Self.prime
            newlines &+= byte == UInt8(ascii: "\n") ? 1 : 0
        }
        value = hash
        return newlines
    }

    public static func digest<Bytes: Sequence<UInt8>>(of bytes: Bytes) -> UInt64 {
        var hasher = FNV1a64()
        hasher.update(bytes)
        return hasher.value
    }
}
