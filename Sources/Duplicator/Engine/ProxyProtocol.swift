import Glibc

/// haproxy's PROXY protocol (versions 1 and 2, TCP over IPv4 and IPv6): the
/// header a load balancer puts before a connection's first byte to say whom
/// the connection is really from. Pure: it reads and writes memory it is
/// given, never a socket, and never allocates, so the session can use it in
/// the completion loop and a fuzz test can throw anything at it.
/// Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
public enum ProxyProtocol {
    public enum Version: String, Sendable, CaseIterable {
        case v1, v2
    }

    /// The longest header accepted: the whole of it fits in the first
    /// segment of any TCP connection (536 bytes, the smallest MSS IPv4
    /// allows), which is where load balancers put it. Room for a v2 header
    /// with the TLVs AWS, Azure and GCP add; a longer one is refused as oversized.
    public static let headerBytesMax = 536
    /// The longest v1 line, CRLF included (the specification's bound).
    public static let version1BytesMax = 107
    /// The longest header `encode` writes (a v1 TCP6 line).
    public static let encodedBytesMax = version1BytesMax

    static let version2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    private static let version1Prefix: [UInt8] = Array("PROXY ".utf8)

    /// Why a header was refused.
    public enum Failure: Error, Sendable, Equatable {
        /// The first bytes are neither "PROXY " nor the v2 signature.
        case notProxyProtocol
        /// No end of the v1 line within 107 bytes, or a v2 length beyond `headerBytesMax`.
        case oversized
        /// A v1 line or v2 header that breaks the specification.
        case malformed
        /// A v2 TLV (type, length, value) that runs past the header's length.
        case tlvBeyondHeader

        /// What the log says of a refused header.
        public var reason: String {
            switch self {
            case .notProxyProtocol: "not a PROXY protocol header"
            case .oversized: "longer than \(ProxyProtocol.headerBytesMax) bytes (v2) or with no CRLF within \(ProxyProtocol.version1BytesMax) (v1)"
            case .malformed: "malformed"
            case .tlvBeyondHeader: "a v2 TLV runs past the header's length"
            }
        }
    }

    public enum ParseOutcome: Sendable, Equatable {
        /// More bytes may still make a valid header.
        case incomplete
        /// A header of `length` bytes; the connection's bytes start after it.
        /// `addresses` is nil for v1 UNKNOWN, v2 LOCAL (a health check of the
        /// balancer itself) and families other than TCP over IPv4 and IPv6:
        /// the receiver then uses the connection's own addresses.
        case complete(length: Int, addresses: ProxyAddresses?)
        case invalid(Failure)
    }

    // MARK: - Parsing

    /// Parses the start of a connection's bytes.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> ParseOutcome {
        guard let first = bytes.first else { return .incomplete }
        if first == version1Prefix[0] { return parseVersion1(bytes) }
        if first == version2Signature[0] { return parseVersion2(bytes) }
        return .invalid(.notProxyProtocol)
    }

    /// Whether the bytes start as `prefix` does, as far as both go.
    private static func startsAsPrefix(_ bytes: UnsafeRawBufferPointer, _ prefix: [UInt8]) -> Bool {
        for index in 0..<min(bytes.count, prefix.count) where bytes[index] != prefix[index] { return false }
        return true
    }

    private static func parseVersion1(_ bytes: UnsafeRawBufferPointer) -> ParseOutcome {
        guard startsAsPrefix(bytes, version1Prefix) else { return .invalid(.notProxyProtocol) }
        var end = -1
        for index in 0..<min(bytes.count, version1BytesMax) {
            let byte = bytes[index]
            if byte == 0x0A {
                guard index > 0, bytes[index - 1] == 0x0D else { return .invalid(.malformed) }
                end = index - 1
                break
            }
            // Printable US-ASCII and the CR before the LF only.
            if byte != 0x0D && !(0x20...0x7E).contains(byte) { return .invalid(.malformed) }
        }
        guard end >= 0 else {
            return bytes.count >= version1BytesMax ? .invalid(.oversized) : .incomplete
        }
        let length = end + 2
        // "PROXY" SP protocol [SP source SP destination SP source-port SP destination-port] CRLF
        var protocolEnd = version1Prefix.count
        while protocolEnd < end && bytes[protocolEnd] != 0x20 { protocolEnd += 1 }
        let protocolName = UnsafeRawBufferPointer(rebasing: bytes[version1Prefix.count..<protocolEnd])
        if equals(protocolName, "UNKNOWN") {
            // Whatever follows up to CRLF is ignored: use the connection's addresses.
            return .complete(length: length, addresses: nil)
        }
        let family: ProxyAddress.Family
        if equals(protocolName, "TCP4") {
            family = .ipv4
        } else if equals(protocolName, "TCP6") {
            family = .ipv6
        } else {
            return .invalid(.malformed)
        }
        return withUnsafeTemporaryAllocation(of: Range<Int>.self, capacity: 4) { fields -> ParseOutcome in
            var count = 0
            var start = protocolEnd + 1
            guard start < end else { return .invalid(.malformed) }
            for index in start...end where index == end || bytes[index] == 0x20 {
                guard count < 4, index > start else { return .invalid(.malformed) }
                fields[count] = start..<index
                count += 1
                start = index + 1
            }
            guard count == 4,
                  let source = parseAddress(UnsafeRawBufferPointer(rebasing: bytes[fields[0]]), family),
                  let destination = parseAddress(UnsafeRawBufferPointer(rebasing: bytes[fields[1]]), family),
                  let sourcePort = parsePort(UnsafeRawBufferPointer(rebasing: bytes[fields[2]])),
                  let destinationPort = parsePort(UnsafeRawBufferPointer(rebasing: bytes[fields[3]])) else {
                return .invalid(.malformed)
            }
            var addresses = ProxyAddresses(source: source, destination: destination)
            addresses.source.port = sourcePort
            addresses.destination.port = destinationPort
            return .complete(length: length, addresses: addresses)
        }
    }

    private static func equals(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        guard bytes.count == text.utf8CodeUnitCount else { return false }
        for index in 0..<bytes.count where bytes[index] != text.utf8Start[index] { return false }
        return true
    }

    /// A dotted quad or an IPv6 address, by inet_pton (which refuses leading zeros in IPv4).
    private static func parseAddress(_ text: UnsafeRawBufferPointer, _ family: ProxyAddress.Family) -> ProxyAddress? {
        guard (2...45).contains(text.count) else { return nil }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { buffer -> ProxyAddress? in
            for index in 0..<text.count { buffer[index] = text[index] }
            buffer[text.count] = 0
            var raw: (UInt64, UInt64) = (0, 0)
            let ok = withUnsafeMutableBytes(of: &raw) { out in
                inet_pton(family == .ipv4 ? AF_INET : AF_INET6, buffer.baseAddress!, out.baseAddress!) == 1
            }
            guard ok else { return nil }
            return withUnsafeBytes(of: raw) { ProxyAddress(family: family, networkBytes: $0, port: 0) }
        }
    }

    /// 0 to 65535 in decimal, without a sign or a leading zero.
    private static func parsePort(_ text: UnsafeRawBufferPointer) -> UInt16? {
        guard (1...5).contains(text.count), !(text.count > 1 && text[0] == 0x30) else { return nil }
        var value = 0
        for byte in text {
            guard (0x30...0x39).contains(byte) else { return nil }
            value = value * 10 + Int(byte - 0x30)
        }
        return value <= 65535 ? UInt16(value) : nil
    }

    private static func parseVersion2(_ bytes: UnsafeRawBufferPointer) -> ParseOutcome {
        guard startsAsPrefix(bytes, version2Signature) else { return .invalid(.notProxyProtocol) }
        guard bytes.count >= 16 else { return .incomplete }
        let versionAndCommand = bytes[12]
        guard versionAndCommand >> 4 == 2 else { return .invalid(.malformed) }
        let command = versionAndCommand & 0x0F
        guard command <= 1 else { return .invalid(.malformed) }
        let familyAndTransport = bytes[13]
        let addressFamily = familyAndTransport >> 4
        let transport = familyAndTransport & 0x0F
        guard addressFamily <= 3, transport <= 2 else { return .invalid(.malformed) }
        let length = 16 + (Int(bytes[14]) << 8 | Int(bytes[15]))
        guard length <= headerBytesMax else { return .invalid(.oversized) }
        guard bytes.count >= length else { return .incomplete }
        // What follows the addresses is TLVs, each of which must end within
        // the header: one that runs past it means the length or the TLV lies.
        let addressBlockBytes = [0, 12, 36, 216][Int(addressFamily)]
        if command == 1, addressFamily != 0, length - 16 >= addressBlockBytes,
           !tlvsFit(bytes, from: 16 + addressBlockBytes, to: length) {
            return .invalid(.tlvBeyondHeader)
        }
        // LOCAL: the balancer's own connection (a health check); UNSPEC, UDP and unix: not ours to use.
        guard command == 1, transport == 1, addressFamily == 1 || addressFamily == 2 else {
            return .complete(length: length, addresses: nil)
        }
        let family: ProxyAddress.Family = addressFamily == 1 ? .ipv4 : .ipv6
        let addressBytes = family == .ipv4 ? 4 : 16
        guard length - 16 >= 2 * addressBytes + 4 else { return .invalid(.malformed) }
        let base = 16
        let source = ProxyAddress(family: family, networkBytes: UnsafeRawBufferPointer(rebasing: bytes[base..<(base + addressBytes)]),
                                  port: UInt16(bytes[base + 2 * addressBytes]) << 8 | UInt16(bytes[base + 2 * addressBytes + 1]))
        let destination = ProxyAddress(family: family,
                                       networkBytes: UnsafeRawBufferPointer(rebasing: bytes[(base + addressBytes)..<(base + 2 * addressBytes)]),
                                       port: UInt16(bytes[base + 2 * addressBytes + 2]) << 8 | UInt16(bytes[base + 2 * addressBytes + 3]))
        return .complete(length: length, addresses: ProxyAddresses(source: source, destination: destination))
    }

    /// Whether the TLVs in `bytes[start..<end]` each end by `end`.
    private static func tlvsFit(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Bool {
        var position = start
        while position < end {
            // A type byte and a two-byte length, then the value.
            guard end - position >= 3 else { return false }
            let valueBytes = Int(bytes[position + 1]) << 8 | Int(bytes[position + 2])
            position += 3 + valueBytes
        }
        return position == end
    }

    // MARK: - Encoding

    /// Writes the header for `addresses` (nil: v1 UNKNOWN, v2 LOCAL) into
    /// `buffer` (at least `encodedBytesMax` bytes) and returns its length.
    /// Two addresses of different families (an IPv4 client on a dual-stack
    /// listener) are both written as IPv6; IPv4-mapped pairs as IPv4.
    public static func encode(_ version: Version, _ addresses: ProxyAddresses?, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= encodedBytesMax)
        let addresses = addresses?.sameFamily
        switch version {
        case .v1: return encodeVersion1(addresses, into: buffer)
        case .v2: return encodeVersion2(addresses, into: buffer)
        }
    }

    private static func encodeVersion1(_ addresses: ProxyAddresses?, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var position = 0
        func put(_ byte: UInt8) {
            buffer[position] = byte
            position += 1
        }
        func put(_ text: StaticString) {
            for index in 0..<text.utf8CodeUnitCount { put(text.utf8Start[index]) }
        }
        func put(number: UInt16) {
            var divisor: UInt16 = 10000
            var started = false
            while divisor > 0 {
                let digit = number / divisor % 10
                if digit != 0 || started || divisor == 1 {
                    put(0x30 + UInt8(digit))
                    started = true
                }
                divisor /= 10
            }
        }
        func put(address: ProxyAddress) {
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { text in
                var raw = address.networkWords
                withUnsafeBytes(of: &raw) { bytes in
                    _ = inet_ntop(address.family == .ipv4 ? AF_INET : AF_INET6, bytes.baseAddress!, text.baseAddress!, 64)
                }
                var index = 0
                while text[index] != 0 {
                    put(UInt8(bitPattern: text[index]))
                    index += 1
                }
            }
        }
        guard let addresses else {
            put("PROXY UNKNOWN\r\n")
            return position
        }
        put(addresses.source.family == .ipv4 ? "PROXY TCP4 " : "PROXY TCP6 ")
        put(address: addresses.source)
        put(0x20)
        put(address: addresses.destination)
        put(0x20)
        put(number: addresses.source.port)
        put(0x20)
        put(number: addresses.destination.port)
        put("\r\n")
        return position
    }

    private static func encodeVersion2(_ addresses: ProxyAddresses?, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        for (index, byte) in version2Signature.enumerated() { buffer[index] = byte }
        guard let addresses else {
            buffer[12] = 0x20  // version 2, LOCAL
            buffer[13] = 0x00  // UNSPEC
            buffer[14] = 0
            buffer[15] = 0
            return 16
        }
        let addressBytes = addresses.source.family == .ipv4 ? 4 : 16
        let length = 2 * addressBytes + 4
        buffer[12] = 0x21  // version 2, PROXY
        buffer[13] = addresses.source.family == .ipv4 ? 0x11 : 0x21  // TCP over IPv4 or IPv6
        buffer[14] = UInt8(length >> 8)
        buffer[15] = UInt8(length & 0xFF)
        var position = 16
        func put(_ address: ProxyAddress) {
            withUnsafeBytes(of: address.networkWords) { bytes in
                for index in 0..<addressBytes { buffer[position + index] = bytes[index] }
            }
            position += addressBytes
        }
        func put(port: UInt16) {
            buffer[position] = UInt8(port >> 8)
            buffer[position + 1] = UInt8(port & 0xFF)
            position += 2
        }
        put(addresses.source)
        put(addresses.destination)
        put(port: addresses.source.port)
        put(port: addresses.destination.port)
        return position
    }
}

/// An IPv4 or IPv6 address and a port, as the PROXY protocol carries them.
public struct ProxyAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Family: Sendable, Equatable { case ipv4, ipv6 }
    public var family: Family
    /// The address in network order: IPv4 in the first 4 of the 16 bytes.
    var high: UInt64
    var low: UInt64
    public var port: UInt16

    /// `networkBytes`: 4 (IPv4) or 16 (IPv6) bytes in network order.
    public init(family: Family, networkBytes: UnsafeRawBufferPointer, port: UInt16) {
        self.family = family
        self.port = port
        var raw: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &raw) { out in
            for index in 0..<min(networkBytes.count, family == .ipv4 ? 4 : 16) { out[index] = networkBytes[index] }
        }
        high = raw.0
        low = raw.1
    }

    /// The 16 bytes of memory, in network order.
    var networkWords: (UInt64, UInt64) { (high, low) }

    private func byte(_ index: Int) -> UInt8 {
        withUnsafeBytes(of: networkWords) { $0[index] }
    }

    /// ::ffff:a.b.c.d, an IPv4 address on an IPv6 socket.
    var isIPv4Mapped: Bool {
        family == .ipv6 && (0..<10).allSatisfy { byte($0) == 0 } && byte(10) == 0xFF && byte(11) == 0xFF
    }

    var unmapped: ProxyAddress {
        guard isIPv4Mapped else { return self }
        return withUnsafeBytes(of: networkWords) {
            ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(rebasing: $0[12..<16]), port: port)
        }
    }

    var mapped: ProxyAddress {
        guard family == .ipv4 else { return self }
        var raw: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &raw) { bytes in
            bytes[10] = 0xFF
            bytes[11] = 0xFF
            for index in 0..<4 { bytes[12 + index] = byte(index) }
        }
        return withUnsafeBytes(of: raw) { ProxyAddress(family: .ipv6, networkBytes: $0, port: port) }
    }

    /// `a.b.c.d:port` or `[v6]:port`.
    public var description: String {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { text in
            var raw = networkWords
            withUnsafeBytes(of: &raw) { bytes in
                _ = inet_ntop(family == .ipv4 ? AF_INET : AF_INET6, bytes.baseAddress!, text.baseAddress!, 64)
            }
            let address = String(cString: text.baseAddress!)
            return family == .ipv4 ? "\(address):\(port)" : "[\(address)]:\(port)"
        }
    }
}

/// Whom a connection is from and whom it was addressed to.
public struct ProxyAddresses: Sendable, Equatable {
    public var source: ProxyAddress
    public var destination: ProxyAddress

    public init(source: ProxyAddress, destination: ProxyAddress) {
        self.source = source
        self.destination = destination
    }

    /// Both of one family, as a header must carry them.
    var sameFamily: ProxyAddresses {
        let source = source.unmapped
        let destination = destination.unmapped
        if source.family == destination.family { return ProxyAddresses(source: source, destination: destination) }
        return ProxyAddresses(source: source.mapped, destination: destination.mapped)
    }
}
