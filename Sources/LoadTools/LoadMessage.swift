import Glibc

/// The requests a LoadClient sends: `sizeBytes` bytes, the last one '\n' and no other.
///
/// When there is room, a request starts with 16 hex digits naming its connection and
/// sequence number; the rest is a fixed printable pattern shared by all connections. So
/// an echo that crosses connections, repeats or reorders a reply, or shifts a byte fails
/// the byte-for-byte check, while sending copies nothing: the header and the shared body
/// go out as two iovecs.
final class LoadMessage {
    static let headerBytesWhenRoom = 16

    let sizeBytes: Int
    /// 0 when the message is too small for a header (then all requests are equal).
    let headerBytes: Int
    /// The whole message; its first `headerBytes` are not used (each connection has its own).
    private let body: UnsafeMutableRawBufferPointer
    /// `headerBytes` per connection, side by side.
    private let headers: UnsafeMutableRawBufferPointer

    init(sizeBytes: Int, connections: Int) {
        precondition(sizeBytes >= 1)
        self.sizeBytes = sizeBytes
        headerBytes = sizeBytes > Self.headerBytesWhenRoom ? Self.headerBytesWhenRoom : 0
        body = .allocate(byteCount: sizeBytes, alignment: 64)
        headers = .allocate(byteCount: max(1, connections * headerBytes), alignment: 64)
        // '!'...'y' repeating with a prime period, so a shifted stream never matches.
        for offset in 0..<sizeBytes - 1 {
            body[offset] = UInt8(ascii: "!") + UInt8(offset % 89)
        }
        body[sizeBytes - 1] = UInt8(ascii: "\n")
        headers.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "0"))
    }

    deinit {
        body.deallocate()
        headers.deallocate()
    }

    private static func hexDigit(_ value: UInt64) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + UInt8(value) : UInt8(ascii: "a") + UInt8(value - 10)
    }

    /// Writes the header of `connection`'s next request.
    func setSequence(_ sequence: UInt64, connection: Int) {
        guard headerBytes > 0 else { return }
        var value = UInt64(connection) << 40 | (sequence & (1 << 40 - 1))
        let start = connection * headerBytes
        for position in stride(from: start + headerBytes - 1, through: start, by: -1) {
            headers[position] = Self.hexDigit(value & 0xf)
            value >>= 4
        }
    }

    /// Points `vectors` (room for 2) at the unsent part of `connection`'s request from
    /// `offset` on, and returns how many it used.
    func fillIOVectors(_ vectors: UnsafeMutablePointer<iovec>, connection: Int, offset: Int) -> Int {
        var count = 0
        if offset < headerBytes {
            vectors[0] = iovec(iov_base: headers.baseAddress! + connection * headerBytes + offset,
                               iov_len: headerBytes - offset)
            count = 1
        }
        let bodyStart = max(offset, headerBytes)
        if bodyStart < sizeBytes {
            vectors[count] = iovec(iov_base: body.baseAddress! + bodyStart, iov_len: sizeBytes - bodyStart)
            count += 1
        }
        return count
    }

    /// nil when `received`, found at `offset` of a response, equals the request there;
    /// otherwise the index in `received` of the first byte that differs.
    func firstMismatch(in received: UnsafeRawBufferPointer, atOffset offset: Int, connection: Int) -> Int? {
        var checked = 0
        if offset < headerBytes {
            let count = min(headerBytes - offset, received.count)
            let expected = headers.baseAddress! + connection * headerBytes + offset
            if memcmp(received.baseAddress!, expected, count) != 0 {
                return firstDifference(received.baseAddress!, expected, count: count)
            }
            checked = count
        }
        let remaining = received.count - checked
        if remaining > 0 {
            let expected = body.baseAddress! + offset + checked
            if memcmp(received.baseAddress! + checked, expected, remaining) != 0 {
                return checked + firstDifference(received.baseAddress! + checked, expected, count: remaining)
            }
        }
        return nil
    }

    private func firstDifference(_ left: UnsafeRawPointer, _ right: UnsafeRawPointer, count: Int) -> Int {
        var index = 0
        while index < count, left.load(fromByteOffset: index, as: UInt8.self) == right.load(fromByteOffset: index, as: UInt8.self) {
            index += 1
        }
        return index
    }
}
