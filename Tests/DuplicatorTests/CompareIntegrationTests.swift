import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Duplicator
import LoadTools

/// An echo server that answers a little differently, one way per server,
/// on its own threads: the mirrors of the `--compare` tests.
final class VariantEchoServer: Sendable {
    enum Variant: Sendable {
        /// Echoes every byte.
        case identical
        /// Echoes, with the byte at this offset of the reply changed.
        case flipByte(at: Int)
        /// Echoes this many bytes, then shuts its write side (and reads on).
        case stopAfter(Int)
        /// Echoes, then adds these bytes once the client's EOF came.
        case addAtEnd([UInt8])
    }

    private let acceptLoop: LoopbackAcceptLoop
    var port: UInt16 { acceptLoop.port }
    private let variant: Variant
    let connectionsEnded = Atomic<Int>(0)

    init(_ variant: Variant) throws {
        self.variant = variant
        acceptLoop = try LoopbackAcceptLoop()
        // A thread per connection: a mirror's sessions run at once.
        try acceptLoop.start { [self] fd in
            if let thread = try? spawnThread({ [self] in handle(fd) }) {
                thread.detach()
            } else {
                close(fd)
            }
        }
    }

    func stop() { acceptLoop.stop() }

    private func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if sent <= 0 { return false }
            offset += sent
        }
        return true
    }

    private func handle(_ fd: Int32) {
        defer {
            close(fd)
            connectionsEnded.add(1, ordering: .relaxed)
        }
        var buffer = [UInt8](repeating: 0, count: 16384)
        var replied = 0
        var writing = true
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            guard writing else { continue }
            var length = count
            switch variant {
            case .identical, .addAtEnd:
                break
            case .flipByte(let offset):
                if offset >= replied && offset < replied + count { buffer[offset - replied] ^= 0x01 }
            case .stopAfter(let limit):
                length = min(count, limit - replied)
            }
            let ok = buffer.withUnsafeBytes { sendAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
            replied += length
            if !ok { return }
            if case .stopAfter(let limit) = variant, replied >= limit {
                shutdown(fd, Int32(SHUT_WR))
                writing = false
            }
        }
        if writing, case .addAtEnd(let extra) = variant {
            _ = extra.withUnsafeBytes { sendAll(fd, $0) }
        }
        shutdown(fd, Int32(SHUT_WR))
    }
}

/// Promise 9 over loopback and real io_uring: mirrors that answer like main,
/// flip a byte, stop early or add bytes each get their verdict, once per
/// session, and the client still gets exactly main's bytes.
@Suite("Compare: verdicts over loopback", .timeLimit(.minutes(6)))
struct CompareIntegrationTests {
    @Test("identical, flipped, cut short and extended mirrors: match, diverged, shorter, longer", arguments: Config.Backend.tested)
    func verdicts(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let variants: [VariantEchoServer.Variant] = [.identical, .flipByte(at: 1000), .stopAfter(500),
                                                     .addAtEnd(Array("extra\n".utf8))]
        let mirrors = try variants.map { try VariantEchoServer($0) }
        defer { mirrors.forEach { $0.stop() } }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: mirrors.map(\.port)) {
            $0.compare = true
            $0.mirrorLingerMs = 5_000
        }
        defer { proxy.shutdown() }

        let sessions = 24
        let failures = try echoSessions(sessions, port: proxy.port, pieceMax: 700) { index in
            var generator = SeededGenerator(seed: UInt64(500 + index))
            return generator.bytes(3_000 + index * 997)
        }
        #expect(failures == [])
        #expect(eventually { proxy.activeSessions == 0 })
        let snapshot = proxy.snapshot()
        let expected: [ReplyComparison.Verdict] = [.match, .diverged, .shorter, .longer]
        for (index, verdict) in expected.enumerated() {
            let mirror = snapshot.mirrors[index]
            for other in ReplyComparison.Verdict.allCases {
                #expect(mirror.compared(other) == (other == verdict ? UInt64(sessions) : 0),
                        "mirror \(index) (\(variants[index])): \(other) \(mirror.compared(other))")
            }
        }
        // The flipped byte is at offset 1000 of every session's reply: the 4 KiB bucket.
        #expect(snapshot.mirrors[1].divergenceOffsetBuckets == [0, 0, UInt64(sessions), 0, 0, 0, 0])
        #expect(snapshot.mirrors[1].divergenceOffsetSum == UInt64(1000 * sessions))
        let metrics = PrometheusText.render(snapshot)
        let name = "127.0.0.1:\(mirrors[1].port)"
        #expect(metrics.contains("duplicator_mirror_compared_sessions_total{mirror=\"\(name)\",result=\"diverged\"} \(sessions)"))
        #expect(metrics.contains("duplicator_mirror_divergence_offset_bytes_bucket{mirror=\"\(name)\",le=\"4096\"} \(sessions)"))
        #expect(metrics.contains("duplicator_mirror_divergence_offset_bytes_count{mirror=\"\(name)\"} \(sessions)"))
        let line = StatsLine.render(from: StatsSnapshot(workers: [], mirrorNames: snapshot.mirrors.map(\.name), poolSlotsPerWorker: 0),
                                    to: snapshot, seconds: 1)
        #expect(line.contains("compared \(sessions) match"), "\(line)")
        #expect(line.contains("compared \(sessions) diverged"), "\(line)")
    }

    @Test("a mirror that resets and one that never reads are incomplete; the client gets main's bytes", arguments: Config.Backend.tested)
    func incomplete(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let resetting = try FaultServer.start(.resetAfterReading(10))
        defer { resetting.stop() }
        let stalled = try startServer(.stall)
        defer { stalled.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [resetting.port, stalled.boundPort]) {
            $0.compare = true
            $0.compareWindowBytes = 256 << 10
            $0.mirrorLingerMs = 200
        }
        defer { proxy.shutdown() }
        let sessions = 5
        for index in 0..<sessions {
            var generator = SeededGenerator(seed: UInt64(900 + index))
            let payload = generator.bytes(50_000)
            let connection = try TestConnection(port: proxy.port)
            let (received, end) = connection.exchange(payload, seed: UInt64(index))
            #expect(end == .eof && received == payload, "session \(index)")
        }
        #expect(eventually { proxy.activeSessions == 0 })
        let snapshot = proxy.snapshot()
        for index in 0..<2 {
            #expect(snapshot.mirrors[index].compared == [0, 0, 0, 0, UInt64(sessions)], "mirror \(index)")
        }
    }

    /// A healthy mirror must never be reported as a mismatch, however the
    /// load splits and delays its replies: 30 concurrent sessions of up to
    /// 1.5 MB each way, whose echo mirror lags main by up to megabytes (kept
    /// this small because the other loopback suites run beside it). In the
    /// default window (56 KiB of bytes, then block digests) and in one larger
    /// than any stream, every pair matches.
    @Test("healthy echo mirrors under load: every pair matches, in the default window and a large one",
          arguments: Config.Backend.tested, [nil, 16 << 20] as [Int?])
    func healthyUnderLoad(backend: Config.Backend, windowBytes: Int?) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.echo)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0.compare = true
            if let windowBytes { $0.compareWindowBytes = windowBytes }
            $0.poolSlots = 8192
            $0.backlogBytesMax = 64 << 20
            $0.backlogChunksMax = 4096
            $0.mirrorLingerMs = 10_000
        }
        defer { proxy.shutdown() }
        let sessions = 30
        let failures = try echoSessions(sessions, port: proxy.port) { index in
            var generator = SeededGenerator(seed: UInt64(7000 + index))
            let fraction = Double.random(in: 0...1, using: &generator)
            return generator.bytes(1 + Int(fraction * fraction * fraction * 1_500_000))
        }
        #expect(failures == [])
        #expect(eventually(timeoutSeconds: 20) { proxy.activeSessions == 0 })
        let verdicts = proxy.snapshot().mirrors[0]
        #expect(verdicts.compared(.diverged) == 0 && verdicts.compared(.shorter) == 0
                && verdicts.compared(.longer) == 0, "\(verdicts.compared)")
        #expect(verdicts.compared(.match) + verdicts.compared(.incomplete) == UInt64(sessions))
        // Streams of at most 1.5 MB: within the default window's digest reach (4 MiB of lead).
        #expect(verdicts.compared(.match) == UInt64(sessions), "\(verdicts.compared)")
    }

    @Test("without --compare the mirror's replies are discarded and nothing is compared", arguments: Config.Backend.tested)
    func offComparesNothing(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try VariantEchoServer(.flipByte(at: 3))
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.port])
        defer { proxy.shutdown() }
        let payload = Array(repeating: UInt8(0x41), count: 10_000)
        let connection = try TestConnection(port: proxy.port)
        let (received, end) = connection.exchange(payload)
        #expect(end == .eof && received == payload)
        #expect(eventually { proxy.activeSessions == 0 })
        let snapshot = proxy.snapshot()
        #expect(snapshot.mirrors[0].compared == [0, 0, 0, 0, 0])
        #expect(snapshot.mirrors[0].replyBytes == 10_000)
        #expect(snapshot.mirrors[0].discards >= 1)
    }
}
