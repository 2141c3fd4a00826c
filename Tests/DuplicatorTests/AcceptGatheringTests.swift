import Duplicator
import Platform
import TestSupport
import Glibc
import Synchronization
import Testing

/// `--accept-gathering auto` over real loopback sockets, with two workers:
/// at low load every new client lands on one worker; once that worker is
/// busy, new clients spread over both; once the load is gone, they gather
/// again. Seen from the outside: the per-worker accept counters of the
/// stats (`duplicator_worker_sessions_accepted_total` on /metrics).
@Suite("AcceptGathering", .serialized)
struct AcceptGatheringTests {
    /// Low thresholds, so that a test's load makes a worker "busy" on a
    /// loaded two-core machine, and a second of quiet gathers again.
    static let thresholds = AcceptGatheringPolicy.Thresholds(spreadBusyMin: 0.15, gatherBusyMax: 0.05, quietMs: 1_000,
                                                             quietMaxMs: 1_000, flapWindowMs: 0)

    static func accepted(_ proxy: Proxy) -> [UInt64] { proxy.stats.map { $0.sessionsAccepted.value } }

    /// Opens `count` connections, each with one echoed exchange (so its
    /// session has surely been accepted); they stay open until returned ones are dropped.
    static func connect(_ count: Int, port: UInt16) throws -> [TestConnection] {
        try (0..<count).map { index in
            let connection = try TestConnection(port: port)
            let message = Array("hello \(index)\n".utf8)
            let reply = connection.exchange(message, shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: message.count)
            guard reply.received == message else { throw TestFailure("connection \(index): no echo (\(reply.end))") }
            return connection
        }
    }

    @Test("at low load new clients land on one worker, under load on both, and gather again when it is gone",
          .timeLimit(.minutes(6)), arguments: Config.Backend.tested)
    func gathersAndSpreads(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: []) {
            $0.threads = 2
            $0.acceptGathering = .auto
            $0.acceptGatheringThresholds = Self.thresholds
        }
        defer { proxy.shutdown() }
        #expect(proxy.acceptGatheringMode == .gathered)

        // Low load: 10 clients, one small exchange each, all on one worker
        // (the kernel's hash alone puts 10 on one of two 1 time in 512).
        var idle = try Self.connect(6, port: proxy.port)
        let stop = Atomic<Bool>(false)
        let loadConnected = Atomic<Int>(0)
        let loadFailures = Mutex<[String]>([])
        let port = proxy.port
        var loaders: [NativeThread] = []
        defer {
            stop.store(true, ordering: .relaxed)
            loaders.forEach { $0.join() }
        }
        for index in 0..<4 {
            loaders.append(try spawnThread {
                do {
                    // Connected while gathered: this load is on the gathered worker.
                    let connection = try Self.connect(1, port: port)[0]
                    loadConnected.add(1, ordering: .relaxed)
                    var generator = SeededGenerator(seed: UInt64(index))
                    let payload = generator.bytes(256 << 10)
                    while !stop.load(ordering: .relaxed) {
                        let reply = connection.exchange(payload, shutdownAfterSending: false, timeoutSeconds: 10,
                                                        expectBytes: payload.count)
                        guard reply.received.count == payload.count else {
                            loadFailures.withLock { $0.append("loader \(index): \(reply.end), \(reply.received.count) bytes") }
                            return
                        }
                    }
                } catch {
                    loadFailures.withLock { $0.append("loader \(index): \(error)") }
                }
            })
            // One at a time, so that the first one's load cannot spread the next one's connect.
            #expect(eventually(timeoutSeconds: 10) { loadConnected.load(ordering: .relaxed) == index + 1 || !loadFailures.withLock { $0.isEmpty } })
        }
        let gathered = Self.accepted(proxy)
        #expect(gathered.sorted() == [0, 10], "10 clients at low load, per worker: \(gathered)")

        // Under load: the gathered worker gets busy, and the workers spread.
        #expect(eventually(timeoutSeconds: 15) { proxy.acceptGatheringMode == .spread },
                "never spread; busy per worker (thousandths): \(proxy.stats.map { $0.busyPermille.value })")
        _ = try Self.connect(16, port: proxy.port)
        let spread = Self.accepted(proxy)
        let newPerWorker = zip(spread, gathered).map { $0 - $1 }
        // By the kernel's hash, 16 on one worker 1 time in 32768.
        #expect(newPerWorker.allSatisfy { $0 > 0 }, "16 clients under load, per worker: \(newPerWorker)")

        // The load gone: after a second of quiet they gather again.
        stop.store(true, ordering: .relaxed)
        loaders.forEach { $0.join() }
        loaders = []
        #expect(loadFailures.withLock { $0 }.isEmpty, "\(loadFailures.withLock { $0 })")
        idle = []
        #expect(eventually(timeoutSeconds: 15) { proxy.acceptGatheringMode == .gathered })
        let before = Self.accepted(proxy)
        let again = try Self.connect(10, port: proxy.port)
        let after = zip(Self.accepted(proxy), before).map { $0 - $1 }
        #expect(after.sorted() == [0, 10], "10 clients once the load has gone, per worker: \(after)")
        _ = again
        _ = idle
    }

    @Test("a half-full session table spreads new clients, however idle the worker", .timeLimit(.minutes(6)),
          arguments: Config.Backend.tested)
    func halfFullSpreads(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: []) {
            $0.threads = 2
            $0.sessionsMax = 32
            $0.acceptGathering = .auto
            // Never busy enough: only the table spreads.
            $0.acceptGatheringThresholds = AcceptGatheringPolicy.Thresholds(spreadBusyMin: 2, gatherBusyMax: 0, quietMs: 60_000)
        }
        defer { proxy.shutdown() }
        #expect(proxy.config.sessionsPerWorker == 32)
        let first = try Self.connect(16, port: proxy.port)
        let gathered = Self.accepted(proxy)
        #expect(gathered.sorted() == [0, 16], "16 clients, per worker: \(gathered)")
        #expect(eventually(timeoutSeconds: 5) { proxy.acceptGatheringMode == .spread })
        // At most 28 on a worker of 32: none refused, and by the hash 12 on one worker 1 time in 2048.
        let more = try Self.connect(12, port: proxy.port)
        let newPerWorker = zip(Self.accepted(proxy), gathered).map { $0 - $1 }
        #expect(newPerWorker.allSatisfy { $0 > 0 }, "12 clients once a table was half full, per worker: \(newPerWorker)")
        #expect(proxy.total { $0.sessionsRejected.value } == 0)
        _ = (first, more)
    }

    @Test("--accept-gathering off: the kernel's hash spreads clients from the start", .timeLimit(.minutes(6)))
    func offSpreads() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try startProxy(backend: .auto, main: main.boundPort, mirrors: []) {
            $0.threads = 2
            $0.acceptGathering = .off
        }
        defer { proxy.shutdown() }
        #expect(proxy.acceptGatheringMode == nil)
        let connections = try Self.connect(16, port: proxy.port)
        #expect(Self.accepted(proxy).allSatisfy { $0 > 0 }, "16 clients, per worker: \(Self.accepted(proxy))")
        _ = connections
    }
}
