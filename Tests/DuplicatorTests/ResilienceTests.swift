import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Duplicator
import LoadTools

/// Exhaustion, scale and churn: the proxy degrades cleanly and comes back.
@Suite("Resilience: exhaustion, scale and churn", .timeLimit(.minutes(6)))
struct ResilienceTests {
    /// Out of descriptors: accept failing with EMFILE neither spins a core nor
    /// crashes; clients are refused cleanly and served again once descriptors free up.
    @Test("EMFILE: no spinning, clean refusal, service again after", .enabled(if: Peers.runnable("prlimit"), "needs prlimit (util-linux)"), arguments: Config.Backend.tested)
    func outOfDescriptors(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        // Two workers whatever the CPU count: each worker's ring and listener
        // take descriptors, so the default (one per CPU) would leave none
        // for sessions under 40 on a large machine.
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "--threads", "2", "--log-level", "error"],
                                     port: freePort(), launcher: [try Peers.require("prlimit"), "--nofile=40:40"])
        var held: [TestConnection] = []
        var served = 0
        for index in 0..<30 {
            guard let connection = try? TestConnection(port: proxy.port, timeoutSeconds: 1) else { continue }
            let message = Array("hold \(index)\n".utf8)
            let (received, _) = connection.exchange(message, shutdownAfterSending: false, timeoutSeconds: 0.5,
                                                    expectBytes: message.count)
            if received == message { served += 1 }
            held.append(connection)
        }
        #expect(served > 5, "some sessions fit in 40 descriptors")
        #expect(served < 30, "not all of them do")
        #expect(proxy.process.isRunning)
        // At the limit, with clients waiting: the process must be idle, not spinning.
        let before = try #require(proxy.cpuSeconds)
        usleep(1_000_000)
        let used = try #require(proxy.cpuSeconds) - before
        #expect(used < 0.3, "CPU seconds used in 1 s at the descriptor limit: \(used)")

        held.removeAll()
        let message = Array("after\n".utf8)
        #expect(eventually(timeoutSeconds: 5) {
            guard let connection = try? TestConnection(port: proxy.port, timeoutSeconds: 1) else { return false }
            return connection.exchange(message, timeoutSeconds: 2).received == message
        }, "served again once descriptors are free")
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }

    /// Admission keeps the pool from running dry, but the kernel is lent only
    /// a window of it: with a window of one slot, receives keep finding none
    /// lent, wait, and resume; nothing deadlocks and main's path loses no byte.
    @Test("a dry window of lent slots pauses reads without deadlock or loss", arguments: Config.Backend.tested)
    func dryPool(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0.poolSlots = 128
            $0.providedWindowSlots = 1
        }
        defer { proxy.shutdown() }
        let sessions = 16
        #expect(proxy.config.sessionsPerWorker == sessions)
        let failures = try echoSessions(sessions, port: proxy.port, timeoutSeconds: 60) { index in
            var generator = SeededGenerator(seed: UInt64(500 + index))
            return generator.bytes(512 * 1024)
        }
        #expect(failures == [],
                "ended: completed \(proxy.total { $0.sessionsCompleted.value }), client error \(proxy.total { $0.sessionsEndedByClientError.value }), main error \(proxy.total { $0.sessionsEndedByMainError.value }), main connect failure \(proxy.total { $0.sessionsEndedByMainConnectFailure.value }); mirror \(proxy.snapshot().mirrors[0]); main server \(main.connectionRecords().filter { $0.wasReset }.count) resets")
        #expect(proxy.total { $0.poolExhausted.value } > 0, "the pool did run dry")
        #expect(eventually { proxy.activeSessions == 0 })
    }

    /// 1000 concurrent sessions, each a closed loop of 1 KiB messages, with a mirror.
    @Test("1000 concurrent sessions", arguments: Config.Backend.tested)
    func thousandSessions(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        // Mirrors may hold half the pool once main is done with a slot; this
        // debug-build sink is slower than main, so give 1000 sessions' worth
        // of lag room (the default 1024 slots would cut some, correctly).
        // 1000 connects at once to a debug-build sink: let the mirror take its time to accept.
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0.poolSlots = 8192
            // The sink never answers a turn: with a long turn timeout every
            // session holds its turns behind the first for as long as the
            // pool lets it (in CI, at the default 100 ms, that cut 97 to 181
            // sessions' mirrors for the pool share).
            $0.mirrorTurnTimeoutUs = 2_000_000
            $0.mirrorConnectTimeoutMs = 10_000
        }
        defer { proxy.shutdown() }
        let client = try LoadClient(address: LoadAddress(host: "127.0.0.1", port: proxy.port), connections: 1000,
                                    messageSizeBytes: 1024, durationSeconds: 3)
        let result = try client.run()
        #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
        #expect(result.connectionsEstablished == 1000)
        #expect(result.requests >= 1000)
        #expect(eventually { proxy.activeSessions == 0 })
        #expect(main.connectionsAccepted == 1000)
        #expect(mirror.connectionsAccepted == 1000)
        #expect(proxy.mirrorTotal(0) { $0.sessionsCutForLag.value } == 0)
        // Every session's mirror stream equals its main stream.
        let mainStreams = receivedStreams(main, count: 1000)
        let mirrorStreams = receivedStreams(mirror, count: 1000)
        let onlyMain = mainStreams.filter { mirrorStreams[$0.key] != $0.value }
        let onlyMirror = mirrorStreams.filter { mainStreams[$0.key] != $0.value }
        #expect(onlyMain.isEmpty && onlyMirror.isEmpty,
                "streams only main got: \(onlyMain.sorted { $0.key.bytes < $1.key.bytes }.prefix(5)), only the mirror got: \(onlyMirror.sorted { $0.key.bytes < $1.key.bytes }.prefix(5)); ended by client error \(proxy.total { $0.sessionsEndedByClientError.value }), completed \(proxy.total { $0.sessionsCompleted.value }), main errors \(proxy.total { $0.sessionsEndedByMainError.value }), main connect failures \(proxy.total { $0.sessionsEndedByMainConnectFailure.value }), mirror missed \(proxy.mirrorTotal(0) { $0.bytesMissed.value }), mirror stats \(proxy.snapshot().mirrors[0]), pool exhausted \(proxy.total { $0.poolExhausted.value })")
    }

    /// 20 000 short sessions in churn, with a failing mirror: descriptors and
    /// memory go back to where they were.
    @Test("20000 short sessions: descriptors and RSS back to baseline", arguments: Config.Backend.tested)
    func churn(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let refusing = RefusingPort()
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)",
                                      "-m", "127.0.0.1:\(mirror.boundPort),127.0.0.1:\(refusing.port)",
                                      "--mirror-linger", "100ms", "--log-level", "error"], port: freePort())
        let port = proxy.port
        func run(_ count: Int, threads: Int) throws -> Int {
            let failures = Atomic<Int>(0)
            try concurrently(threads) { thread in
                for index in 0..<(count / threads) {
                    let message = Array("churn \(thread) \(index)\n".utf8)
                    guard let connection = try? TestConnection(port: port),
                          connection.exchange(message, timeoutSeconds: 5).received == message else {
                        failures.add(1, ordering: .relaxed)
                        continue
                    }
                }
            }
            return failures.load(ordering: .relaxed)
        }
        #expect(try run(1000, threads: 8) == 0)
        #expect(eventually { mirror.connectionsOpen == 0 })
        let descriptors = try #require(proxy.settledDescriptorCount())
        let resident = try #require(proxy.residentBytes)
        #expect(try run(20_000, threads: 8) == 0)
        #expect(eventually(timeoutSeconds: 10) { proxy.descriptorCount == descriptors },
                "descriptors \(String(describing: proxy.descriptorCount)), baseline \(descriptors)")
        let grown = try #require(proxy.residentBytes) - resident
        #expect(grown < 4 << 20, "RSS grew by \(grown) bytes over 20000 sessions")
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }
}
