import Glibc
import Synchronization
import Testing
@testable import Duplicator

// `-m ADDR@P%`: parsing, the per-session choice under the simulated IO
// (seeded, so it replays), and the share over loopback.

@Suite("Sampling: parsing -m ADDR@P%")
struct SamplingParserTests {
    @Test("an address with or without a percentage")
    func parses() throws {
        #expect(try MirrorSampling.parse(":8082") == (":8082", nil))
        #expect(try MirrorSampling.parse(":8082@10%") == (":8082", 10))
        #expect(try MirrorSampling.parse("[::1]:8082@0.5%") == ("[::1]:8082", 0.5))
        #expect(try MirrorSampling.parse("host:1@100%") == ("host:1", 100))
    }

    @Test("bad percentages are refused with one line naming the mirror",
          arguments: [":1@", ":1@10", ":1@0%", ":1@101%", ":1@%", ":1@.%", ":1@-5%", ":1@nan%", ":1@inf%", ":1@1e2%",
                      ":1@5%%", ":1@@5%", ":1@1.2.3%", ":1@ 5%"])
    func refuses(text: String) {
        do {
            _ = try MirrorSampling.parse(text)
            Issue.record("'\(text)' was accepted")
        } catch {
            #expect(error.message.hasPrefix("-m '\(text)': "), "\(error.message)")
            #expect(!error.message.contains("\n"))
        }
    }

    @Test("thresholds: 100% is every session, others in proportion")
    func thresholds() {
        #expect(MirrorSampling.threshold(percent: 100) == MirrorSampling.everySession)
        #expect(MirrorSampling.threshold(percent: 50) == MirrorSampling.everySession / 2)
        #expect(MirrorSampling.threshold(percent: 0.0001) > 0)
    }

    @Test("Config carries the percentages to the sessions and validates them")
    func config() throws {
        var config = Config(listen: try Endpoint(parsing: ":0", role: .listen), main: endpoint(1),
                            mirrors: [endpoint(2), endpoint(3)])
        config.mirrorSamplePercents = [25, 100]
        try config.validate()
        #expect(config.limits.mirrorSampleThresholds == [MirrorSampling.everySession / 4, MirrorSampling.everySession])
        config.mirrorSamplePercents = [25]
        #expect(throws: ConfigError.self) { try config.validate() }
        config.mirrorSamplePercents = [0, 100]
        #expect(throws: ConfigError.self) { try config.validate() }
        config.mirrorSamplePercents = []
        #expect(config.limits.mirrorSampleThresholds.isEmpty)
    }
}

@Suite("Sampling: which sessions a mirror gets")
struct SamplingSessionTests {
    /// Binomial bounds: the count of `n` draws at `p` is within 5 standard deviations of n*p.
    static func withinBounds(_ count: Int, of n: Int, p: Double) -> Bool {
        let mean = Double(n) * p
        let deviation = (Double(n) * p * (1 - p)).squareRoot()
        return abs(Double(count) - mean) <= 5 * deviation
    }

    @Test("a 30% mirror gets about 30% of sessions, a full one all; those left out are counted, not missed",
          arguments: [UInt64(1), 2, 3])
    func share(seed: UInt64) throws {
        var limits = SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        limits.mirrorSampleThresholds = [MirrorSampling.threshold(percent: 30), MirrorSampling.everySession]
        let io = try FakeSessionIO(limits: limits, sessions: 1, samplingSeed: seed)
        let sessions = 1000
        var mirrored = 0
        for index in 0..<sessions {
            try #require(io.start() != nil)
            let key = try #require(io.lastKey)
            let asked = io.requests(.connect, .mirror(0), key).count
            #expect(asked <= 1)
            mirrored += asked
            #expect(io.requests(.connect, .mirror(1), key).count == 1)
            io.connectAll(key)
            let bytes = TestBytes.random(100, seed: UInt64(index))
            io.completeRecv(.client, bytes, key)
            io.flushAllSends(key)
            io.completeEOF(.client, key)
            io.flushAllSends(key)
            io.completeShutdown(.main, key)
            if asked == 1 {
                #expect(io.sent(to: .mirror(0), key) == bytes)
                io.completeShutdown(.mirror(0), key)
                io.completeDiscard(.mirror(0), result: 0, key)
            }
            io.completeShutdown(.mirror(1), key)
            io.completeDiscard(.mirror(1), result: 0, key)
            io.completeEOF(.main, key)
            io.flushAllSends(key)
            io.completeShutdown(.client, key)
            #expect(io.session(key) == nil, "session \(index) did not end")
            #expect(io.ended[key]?.cause == .completed)
        }
        #expect(Self.withinBounds(mirrored, of: sessions, p: 0.3), "\(mirrored) of \(sessions)")
        let stats = io.stats.mirrors
        #expect(stats[0].sessionsMirrored.value == UInt64(mirrored))
        #expect(stats[0].sessionsSampledOut.value == UInt64(sessions - mirrored))
        #expect(stats[0].bytesMissed.value == 0, "a session left out is not a session with a hole")
        #expect(stats[0].sessionsSkipped.value == 0)
        #expect(stats[1].sessionsMirrored.value == UInt64(sessions))
        #expect(stats[1].sessionsSampledOut.value == 0)
        io.expectQuiescent()
    }

    @Test("the choice replays from its seed")
    func replays() throws {
        func choices(seed: UInt64) throws -> [Bool] {
            var limits = SessionLimits(mirrorCount: 1, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
            limits.mirrorSampleThresholds = [MirrorSampling.threshold(percent: 50)]
            let io = try FakeSessionIO(limits: limits, sessions: 1, samplingSeed: seed)
            var result: [Bool] = []
            for _ in 0..<64 {
                try #require(io.start() != nil)
                result.append(io.hasPending(.connect, .mirror(0)))
                io.abort()
                io.completeCancelled()
            }
            return result
        }
        #expect(try choices(seed: 9) == choices(seed: 9))
        #expect(try choices(seed: 9) != choices(seed: 10))
    }
}

@Suite("Sampling: over loopback", .timeLimit(.minutes(6)))
struct SamplingLoopbackTests {
    /// 400 sessions through a proxy with a mirror at 25%: the mirror's
    /// server sees about a quarter of them (5 standard deviations), every
    /// session is mirrored or counted as left out, and none misses bytes.
    @Test("a 25% mirror gets a quarter of the sessions, within statistical bounds")
    func share() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let sampled = try startServer(.sink)
        defer { sampled.stop() }
        let full = try startServer(.sink)
        defer { full.stop() }
        let proxy = try startProxy(main: main.boundPort, mirrors: [sampled.boundPort, full.boundPort]) {
            $0.mirrorSamplePercents = [25, 100]
        }
        defer { proxy.shutdown() }
        let sessions = 400
        let failures = Mutex<Int>(0)
        let port = proxy.port
        for batch in 0..<(sessions / 20) {
            try concurrently(20) { index in
                let payload = Array("session \(batch * 20 + index)\n".utf8)
                guard let connection = try? TestConnection(port: port) else {
                    failures.withLock { $0 += 1 }
                    return
                }
                let (received, end) = connection.exchange(payload)
                if received != payload || end != .eof { failures.withLock { $0 += 1 } }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(eventually { proxy.activeSessions == 0 })
        let mirrored = Int(proxy.mirrorTotal(0) { $0.sessionsMirrored.value })
        let left = Int(proxy.mirrorTotal(0) { $0.sessionsSampledOut.value })
        #expect(mirrored + left == sessions)
        #expect(SamplingSessionTests.withinBounds(mirrored, of: sessions, p: 0.25), "\(mirrored) of \(sessions)")
        #expect(eventually { sampled.connectionRecords().count == mirrored })
        #expect(proxy.mirrorTotal(0) { $0.bytesMissed.value } == 0)
        #expect(proxy.mirrorTotal(1) { $0.sessionsMirrored.value } == UInt64(sessions))
        #expect(proxy.mirrorTotal(1) { $0.sessionsSampledOut.value } == 0)
        let metrics = PrometheusText.render(proxy.snapshot())
        #expect(metrics.contains("duplicator_mirror_sampled_out_sessions_total{mirror=\"127.0.0.1:\(sampled.boundPort)\"} \(left)"))
    }
}
