import Glibc
import Testing
import TestSupport
@testable import Duplicator

/// The PROXY protocol parser and encoder, pure: known headers from the
/// specification, every refusal, round trips, and a seeded fuzz (never a trap).
@Suite("PROXY protocol: parser and encoder")
struct ProxyProtocolTests {
    static func address(_ text: String, _ port: UInt16) -> ProxyAddress {
        let family: ProxyAddress.Family = text.contains(":") ? .ipv6 : .ipv4
        var raw = [UInt8](repeating: 0, count: 16)
        #expect(inet_pton(family == .ipv4 ? AF_INET : AF_INET6, text, &raw) == 1)
        return raw.withUnsafeBytes { ProxyAddress(family: family, networkBytes: $0, port: port) }
    }

    static let tcp4 = ProxyAddresses(source: address("192.0.2.10", 56324), destination: address("198.51.100.1", 443))
    static let tcp6 = ProxyAddresses(source: address("2001:db8::1", 40000), destination: address("::1", 8080))

    static func parse(_ bytes: [UInt8]) -> ProxyProtocol.ParseOutcome {
        bytes.withUnsafeBytes { ProxyProtocol.parse($0) }
    }

    static func encode(_ version: ProxyProtocol.Version, _ addresses: ProxyAddresses?) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: ProxyProtocol.encodedBytesMax)
        let length = buffer.withUnsafeMutableBytes { ProxyProtocol.encode(version, addresses, into: $0) }
        return Array(buffer[..<length])
    }

    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    @Test("v1 lines: TCP4, TCP6, UNKNOWN, followed by data")
    func version1() {
        let line = Array("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".utf8)
        #expect(Self.parse(line + Array("GET /".utf8)) == .complete(length: line.count, addresses: Self.tcp4))
        let line6 = Array("PROXY TCP6 2001:db8::1 ::1 40000 8080\r\n".utf8)
        #expect(Self.parse(line6) == .complete(length: line6.count, addresses: Self.tcp6))
        #expect(Self.parse(Array("PROXY UNKNOWN\r\n".utf8)) == .complete(length: 15, addresses: nil))
        let unknown = Array("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".utf8)
        #expect(Self.parse(unknown) == .complete(length: unknown.count, addresses: nil))
    }

    @Test("v2 headers: TCP4, TCP6 with TLVs, LOCAL, UNSPEC")
    func version2() {
        let tcp4: [UInt8] = Self.signature + [0x21, 0x11, 0x00, 0x0C, 192, 0, 2, 10, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB]
        #expect(Self.parse(tcp4 + [1, 2, 3]) == .complete(length: 28, addresses: Self.tcp4))
        var tcp6: [UInt8] = Self.signature + [0x21, 0x21, 0x00, 36 + 7]
        tcp6 += [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]
        tcp6 += [UInt8](repeating: 0, count: 15) + [1]
        tcp6 += [0x9C, 0x40, 0x1F, 0x90]
        tcp6 += [0x04, 0x00, 0x04, 0x41, 0x42, 0x43, 0x44]  // a TLV (PP2_TYPE_NOOP), skipped
        #expect(Self.parse(tcp6) == .complete(length: 16 + 43, addresses: Self.tcp6))
        let local: [UInt8] = Self.signature + [0x20, 0x00, 0x00, 0x00]
        #expect(Self.parse(local) == .complete(length: 16, addresses: nil))
        let unixSocket: [UInt8] = Self.signature + [0x21, 0x31, 0x00, 216] + [UInt8](repeating: 0x41, count: 216)
        #expect(Self.parse(unixSocket) == .complete(length: 232, addresses: nil))
        // TLVs that exactly fill the header: two, the second with an empty value.
        let twoTLVs: [UInt8] = Self.signature + [0x21, 0x11, 0x00, 12 + 7, 192, 0, 2, 10, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB]
            + [0x04, 0x00, 0x01, 0x41, 0x04, 0x00, 0x00]
        #expect(Self.parse(twoTLVs) == .complete(length: 16 + 19, addresses: Self.tcp4))
    }

    @Test("garbage, truncated, malformed and oversized headers")
    func refusals() {
        var cases: [(String, [UInt8], ProxyProtocol.ParseOutcome)] = [
            ("an HTTP request", Array("GET / HTTP/1.1\r\n".utf8), .invalid(.notProxyProtocol)),
            ("a Redis command", Array("*1\r\n$4\r\nPING\r\n".utf8), .invalid(.notProxyProtocol)),
            ("lower case", Array("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n".utf8), .invalid(.notProxyProtocol)),
            ("PROXY without a space", Array("PROXYTCP4".utf8), .invalid(.notProxyProtocol)),
            ("a v2 signature gone wrong", Self.signature.prefix(7) + [0x00], .invalid(.notProxyProtocol)),
            ("a truncated v1 line", Array("PROXY TCP4 192.0.2.10 198.51".utf8), .incomplete),
            ("a truncated v2 header", Array(Self.signature.prefix(9)), .incomplete),
            ("a v2 header without its addresses", Self.signature + [0x21, 0x11, 0x00, 0x0C, 192, 0], .incomplete),
            ("no CRLF within 107 bytes", Array("PROXY TCP6 ".utf8) + [UInt8](repeating: 0x31, count: 100), .invalid(.oversized)),
            ("a v2 length beyond 536", Self.signature + [0x21, 0x11, 0x02, 0x09], .invalid(.oversized)),
            ("LF without CR", Array("PROXY UNKNOWN\n".utf8), .invalid(.malformed)),
            ("a control byte", Array("PROXY TCP4\u{0}".utf8), .invalid(.malformed)),
            ("TCP5", Array("PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n".utf8), .invalid(.malformed)),
            ("an IPv6 address in TCP4", Array("PROXY TCP4 ::1 1.2.3.4 1 2\r\n".utf8), .invalid(.malformed)),
            ("a port beyond 65535", Array("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n".utf8), .invalid(.malformed)),
            ("a port with a leading zero", Array("PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n".utf8), .invalid(.malformed)),
            ("a negative port", Array("PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n".utf8), .invalid(.malformed)),
            ("two spaces", Array("PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n".utf8), .invalid(.malformed)),
            ("a field missing", Array("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n".utf8), .invalid(.malformed)),
            ("a field too many", Array("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n".utf8), .invalid(.malformed)),
            ("an IPv4 octet beyond 255", Array("PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n".utf8), .invalid(.malformed)),
            ("v2 version 3", Self.signature + [0x31, 0x11, 0x00, 0x0C], .invalid(.malformed)),
            ("v2 command 2", Self.signature + [0x22, 0x11, 0x00, 0x0C], .invalid(.malformed)),
            ("v2 family 4", Self.signature + [0x21, 0x41, 0x00, 0x0C], .invalid(.malformed)),
            ("v2 TCP4 too short for its addresses", Self.signature + [0x21, 0x11, 0x00, 0x08] + [UInt8](repeating: 1, count: 8), .invalid(.malformed)),
        ]
        // TCP4 addresses (12 bytes), then a TLV whose value would run past the header's length.
        let addresses4: [UInt8] = [192, 0, 2, 10, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB]
        cases += [
            ("a v2 TLV whose length runs past the header", Self.signature + [0x21, 0x11, 0x00, 12 + 5] + addresses4
                + [0x04, 0x00, 0x09, 0x41, 0x42], .invalid(.tlvBeyondHeader)),
            ("a v2 TLV cut inside its type and length", Self.signature + [0x21, 0x11, 0x00, 12 + 2] + addresses4
                + [0x04, 0x00], .invalid(.tlvBeyondHeader)),
            ("a v2 second TLV that runs past the header", Self.signature + [0x21, 0x11, 0x00, 12 + 8] + addresses4
                + [0x04, 0x00, 0x01, 0x41, 0x04, 0x00, 0x02, 0x41], .invalid(.tlvBeyondHeader)),
            ("a v2 unix-socket header with a TLV past its length", Self.signature + [0x21, 0x31, 0x00, 216 + 3]
                + [UInt8](repeating: 0x41, count: 216) + [0x04, 0x00, 0x01], .invalid(.tlvBeyondHeader)),
        ]
        for (name, bytes, expected) in cases {
            #expect(Self.parse(bytes) == expected, "\(name)")
        }
        #expect(Self.parse([]) == .incomplete)
    }

    /// The bounds themselves: a v1 line of exactly 107 bytes (CRLF
    /// included; UNKNOWN ignores the rest of its line) is a header, one of
    /// 108 is not; a v2 header of exactly 536 bytes is one, 537 is not.
    @Test("a v1 line of 107 bytes and a v2 header of 536 are taken; a byte more is oversized")
    func bounds() {
        func unknownLine(_ bytes: Int) -> [UInt8] {
            Array("PROXY UNKNOWN ".utf8) + [UInt8](repeating: 0x61, count: bytes - 16) + Array("\r\n".utf8)
        }
        #expect(unknownLine(107).count == ProxyProtocol.version1BytesMax)
        #expect(Self.parse(unknownLine(107) + Array("GET".utf8)) == .complete(length: 107, addresses: nil))
        #expect(Self.parse(unknownLine(108)) == .invalid(.oversized))
        func local(_ bytes: Int) -> [UInt8] {
            let length = bytes - 16
            return Self.signature + [0x20, 0x00, UInt8(length >> 8), UInt8(length & 0xFF)] + [UInt8](repeating: 0, count: length)
        }
        #expect(local(536).count == ProxyProtocol.headerBytesMax)
        #expect(Self.parse(local(536)) == .complete(length: 536, addresses: nil))
        #expect(Self.parse(local(537)) == .invalid(.oversized))
    }

    @Test("encoded headers: the exact bytes of v1 and v2, and UNKNOWN/LOCAL without addresses")
    func encoding() {
        #expect(Self.encode(.v1, Self.tcp4) == Array("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".utf8))
        #expect(Self.encode(.v1, Self.tcp6) == Array("PROXY TCP6 2001:db8::1 ::1 40000 8080\r\n".utf8))
        #expect(Self.encode(.v1, nil) == Array("PROXY UNKNOWN\r\n".utf8))
        #expect(Self.encode(.v2, Self.tcp4)
                == Self.signature + [0x21, 0x11, 0x00, 0x0C, 192, 0, 2, 10, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB])
        #expect(Self.encode(.v2, nil) == Self.signature + [0x20, 0x00, 0x00, 0x00])
        // An IPv4 client on a dual-stack listener: both mapped addresses are written as IPv4.
        let mapped = ProxyAddresses(source: Self.address("::ffff:192.0.2.10", 56324), destination: Self.address("::ffff:198.51.100.1", 443))
        #expect(Self.encode(.v1, mapped) == Self.encode(.v1, Self.tcp4))
        // Mixed families: both as IPv6.
        let mixed = ProxyAddresses(source: Self.address("192.0.2.10", 1), destination: Self.address("2001:db8::2", 2))
        #expect(Self.encode(.v1, mixed) == Array("PROXY TCP6 ::ffff:192.0.2.10 2001:db8::2 1 2\r\n".utf8))
        // The longest v1 line fits the bound.
        let longest = ProxyAddresses(source: Self.address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535),
                                     destination: Self.address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535))
        #expect(Self.encode(.v1, longest).count <= ProxyProtocol.version1BytesMax)
    }

    @Test("round trips: what is encoded parses back to the same addresses, every prefix is incomplete")
    func roundTrips() {
        var rng = SeededGenerator(seed: 14)
        for _ in 0..<2000 {
            let v6 = rng.chance(1, in: 2)
            func randomAddress() -> ProxyAddress {
                let bytes = TestBytes.random(16, using: &rng)
                var address = bytes.withUnsafeBytes {
                    ProxyAddress(family: v6 ? .ipv6 : .ipv4, networkBytes: $0, port: UInt16.random(in: 0...65535, using: &rng))
                }
                if address.isIPv4Mapped { address = address.unmapped }
                return address
            }
            let addresses = ProxyAddresses(source: randomAddress(), destination: randomAddress())
            for version in ProxyProtocol.Version.allCases {
                let header = Self.encode(version, addresses)
                let expected = addresses.sameFamily
                #expect(Self.parse(header + [0x47, 0x45]) == .complete(length: header.count, addresses: expected), "\(version) \(header)")
                let cut = Int.random(in: 0..<header.count, using: &rng)
                #expect(Self.parse(Array(header[..<cut])) == .incomplete, "\(version) cut at \(cut)")
            }
        }
    }

    @Test("fuzz: random and mutated headers never trap and never claim more than they were given", arguments: 0..<4)
    func fuzz(shard: Int) {
        var rng = SeededGenerator(seed: UInt64(14_000 + shard))
        let seeds: [[UInt8]] = [
            Array("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".utf8),
            Array("PROXY TCP6 2001:db8::1 ::1 40000 8080\r\n".utf8),
            Array("PROXY UNKNOWN\r\n".utf8),
            Self.encode(.v2, Self.tcp4), Self.encode(.v2, Self.tcp6), Self.encode(.v2, nil),
        ]
        var complete = 0
        for _ in 0..<20_000 {
            var bytes: [UInt8]
            if rng.chance(1, in: 4) {
                bytes = TestBytes.random(Int.random(in: 0...600, using: &rng), using: &rng)
                if rng.chance(1, in: 2) { bytes = Self.signature + bytes }
            } else {
                bytes = seeds.randomElement(using: &rng)!
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let position = Int.random(in: 0..<max(1, bytes.count), using: &rng)
                    switch Int.random(in: 0..<4, using: &rng) {
                    case 0 where !bytes.isEmpty: bytes[position] = UInt8.random(in: 0...255, using: &rng)
                    case 1 where !bytes.isEmpty: bytes.remove(at: position)
                    case 2: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: min(position, bytes.count))
                    default: bytes += TestBytes.random(Int.random(in: 0...40, using: &rng), using: &rng)
                    }
                }
            }
            if case .complete(let length, _) = Self.parse(bytes) {
                complete += 1
                #expect(length >= 15 && length <= bytes.count && length <= ProxyProtocol.headerBytesMax)
                // A header is decided by its own bytes: what follows cannot change it.
                #expect(Self.parse(Array(bytes[..<length])) == Self.parse(bytes))
            }
        }
        #expect(complete > 100, "the fuzzer also produced valid headers")
    }
}

@Suite("PROXY protocol: how bad headers are reported")
struct ProxyHeaderReportingTests {
    @Test("bad headers are a cause of ended sessions in /metrics and in the stats line")
    func reported() {
        let workers = [WorkerStats(mirrorCount: 0), WorkerStats(mirrorCount: 0)]
        let before = StatsSnapshot(workers: workers, mirrorNames: [], poolSlotsPerWorker: 64)
        workers[0].sessionsEndedByBadProxyHeader.bump(2)
        workers[1].sessionsEndedByBadProxyHeader.bump(1)
        let after = StatsSnapshot(workers: workers, mirrorNames: [], poolSlotsPerWorker: 64)
        #expect(after.sessionsEnded == 3)
        #expect(PrometheusText.render(after).contains("\nduplicator_sessions_ended_total{cause=\"bad_proxy_header\"} 3\n"))
        #expect(StatsLine.render(from: before, to: after, seconds: 1).contains("3 bad PROXY protocol headers"))
    }
}
