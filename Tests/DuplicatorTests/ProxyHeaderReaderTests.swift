import Ring
import Testing
@testable import Duplicator

/// The `--accept-proxy` header reader alone (`ProxyHeaderReader`): pieces
/// in pool slots, no session, no IO. `SessionProxyHeaderTests` drives the
/// same through a session.
@Suite("ProxyHeaderReader")
struct ProxyHeaderReaderTests {
    private static let header = "PROXY TCP4 192.0.2.1 198.51.100.2 40000 8080\r\n"

    private static func put(_ text: String, in slot: UInt32, _ pool: BufferPool) -> Int {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { pool.pointer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return bytes.count
    }

    @Test("a whole header in one piece: the bytes after it are the client's")
    func wholeHeader() throws {
        let pool = try BufferPool(slotSize: 4096, slotCount: 4)
        var reader = ProxyHeaderReader()
        reader.begin(deadlineMs: 100)
        #expect(reader.isAwaiting)
        let length = Self.put(Self.header + "hello", in: 0, pool)
        guard case .complete(let bytesAfter, let addresses) = reader.read(slot: 0, length: length, pool: pool) else {
            Issue.record("not complete")
            return
        }
        #expect(bytesAfter == Self.header.utf8.count)
        #expect(addresses?.source.port == 40000 && addresses?.destination.port == 8080)
        #expect(reader.stop() == nil, "no slot held")
        #expect(!reader.isAwaiting)
    }

    @Test("a header in pieces is joined in the first piece's slot; later pieces' slots go back")
    func headerInPieces() throws {
        let pool = try BufferPool(slotSize: 4096, slotCount: 4)
        var reader = ProxyHeaderReader()
        reader.begin(deadlineMs: 100)
        let text = Array((Self.header + "GET").utf8)
        let first = Self.put(String(decoding: text[0..<10], as: UTF8.self), in: 0, pool)
        guard case .incomplete(releaseSlot: false) = reader.read(slot: 0, length: first, pool: pool) else {
            Issue.record("the first piece is not held")
            return
        }
        #expect(reader.heldSlot == 0)
        let second = Self.put(String(decoding: text[10..<20], as: UTF8.self), in: 1, pool)
        guard case .incomplete(releaseSlot: true) = reader.read(slot: 1, length: second, pool: pool) else {
            Issue.record("the second piece's slot is not given back")
            return
        }
        let third = Self.put(String(decoding: text[20...], as: UTF8.self), in: 2, pool)
        guard case .complete(let bytesAfter, let addresses) = reader.read(slot: 2, length: third, pool: pool) else {
            Issue.record("not complete")
            return
        }
        #expect(bytesAfter == Self.header.utf8.count - 20, "the client's bytes start after the header's rest")
        #expect(third - bytesAfter == 3)
        #expect(addresses?.source.port == 40000)
        #expect(reader.stop() == 0, "the held slot is the caller's to give back")
        #expect(reader.heldSlot == nil)
    }

    @Test("bytes that are no header are refused")
    func invalidHeader() throws {
        let pool = try BufferPool(slotSize: 4096, slotCount: 4)
        var reader = ProxyHeaderReader()
        reader.begin(deadlineMs: 100)
        let length = Self.put("GET / HTTP/1.1\r\n\r\n", in: 0, pool)
        guard case .invalid = reader.read(slot: 0, length: length, pool: pool) else {
            Issue.record("not refused")
            return
        }
    }

    @Test("the header is overdue at its deadline, and not once it is no longer awaited")
    func deadline() {
        var reader = ProxyHeaderReader()
        #expect(!reader.isOverdue(nowMs: 1_000), "not awaited")
        reader.begin(deadlineMs: 100)
        #expect(!reader.isOverdue(nowMs: 99))
        #expect(reader.isOverdue(nowMs: 100))
        _ = reader.stop()
        #expect(!reader.isOverdue(nowMs: 1_000))
    }
}
