import LoadTools
import Testing

extension LoadToolsTests {
    @Suite struct FNV1a64Tests {
        // Reference values of the FNV-1a 64-bit test suite.
        @Test(arguments: [
            ("", UInt64(0xcbf2_9ce4_8422_2325)),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ])
        func matchesReferenceValues(text: String, digest: UInt64) {
            #expect(FNV1a64.digest(of: Array(text.utf8)) == digest)
        }

        @Test func isTheSameInPieces() {
            let bytes = patternBytes(count: 10_000)
            var hasher = FNV1a64()
            bytes.withUnsafeBytes { all in
                hasher.update(UnsafeRawBufferPointer(rebasing: all[..<3333]))
                hasher.update(UnsafeRawBufferPointer(rebasing: all[3333...]))
            }
            #expect(hasher.value == FNV1a64.digest(of: bytes))
        }
    }
}
