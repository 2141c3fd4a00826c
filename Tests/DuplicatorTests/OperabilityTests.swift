import Foundation
import Glibc
import Testing
@testable import Duplicator
import LoadTools

@Suite("Operability: metrics, back-off, stats line", .timeLimit(.minutes(6)))
struct OperabilityTests {
    /// A real HTTP client (curl) scrapes /metrics from the running binary;
    /// every line follows the Prometheus text format.
    @Test("GET /metrics with curl", .enabled(if: Peers.runnable("curl"), "needs curl"), arguments: Config.Backend.tested)
    func metricsWithCurl(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let refusing = RefusingPort()
        let metricsPort = freePort()
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(mirror.boundPort)",
                                      "-m", "127.0.0.1:\(refusing.port)", "--metrics", "127.0.0.1:\(metricsPort)"],
                                     port: freePort())
        for index in 0..<5 {
            let connection = try TestConnection(port: proxy.port)
            let message = Array("request \(index)\n".utf8)
            #expect(connection.exchange(message, timeoutSeconds: 5).received == message)
        }
        // 6: the startup probe of ProxyProcess is a session too.
        #expect(eventually { mirror.connectionRecords().filter(\.peerClosed).count == 6 })
        let result = try runProgram(try Peers.require("curl"), ["-sS", "-i", "http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(result.status == 0, "curl: \(result.standardError)")
        let response = result.standardOutput
        #expect(response.hasPrefix("HTTP/1.1 200 OK"))
        #expect(response.contains("Content-Type: text/plain; version=0.0.4"))
        let body = try #require(response.components(separatedBy: "\r\n\r\n").last)
        #expect(body.contains("duplicator_sessions_accepted_total 6"))
        #expect(body.contains("duplicator_mirror_bytes_total{mirror=\"127.0.0.1:\(mirror.boundPort)\"} \(mirror.totalBytesReceived)"))
        #expect(body.contains("duplicator_mirror_connect_failures_total{mirror=\"127.0.0.1:\(refusing.port)\"}"))
        let sample = try Regex(#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [0-9]+$"#)
        let comment = try Regex(#"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$"#)
        var families = Set<String>()
        for line in body.split(separator: "\n") {
            #expect(line.wholeMatch(of: sample) != nil || line.wholeMatch(of: comment) != nil, "bad line: \(line)")
            if line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                #expect(!families.contains(name), "family \(name) twice")
                families.insert(name)
                if line.hasSuffix(" counter") { #expect(name.hasSuffix("_total")) }
            }
        }
        #expect(families.count >= 15)
        let notFound = try runProgram(try Peers.require("curl"), ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(metricsPort)/"])
        #expect(notFound.standardOutput == "404")
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }

    /// After repeated connect failures a mirror rests; once it is back, new
    /// sessions use it again without a restart.
    @Test("mirror back-off, then recovery without a restart", arguments: Config.Backend.tested)
    func mirrorBackoffAndRecovery(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        var refusing: RefusingPort? = RefusingPort()
        let mirrorPort = refusing!.port
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirrorPort]) {
            $0.mirrorBackoffInitialMs = 200
            $0.mirrorBackoffMaxMs = 400
        }
        defer { proxy.shutdown() }
        func session(_ index: Int) throws {
            let connection = try TestConnection(port: proxy.port)
            let message = Array("session \(index)\n".utf8)
            let (received, end) = connection.exchange(message, timeoutSeconds: 5)
            #expect(received == message && end == .eof)
        }
        for index in 0..<10 { try session(index) }
        #expect(proxy.mirrorTotal(0) { $0.connectFailures.value } >= 3)
        #expect(proxy.mirrorTotal(0) { $0.sessionsSkipped.value } >= 1, "sessions skipped while backing off")
        #expect(proxy.snapshot().mirrors[0].sessionsSkipped >= 1)

        // The mirror comes up on its port.
        refusing = nil
        let mirror = TestServer(address: LoadAddress(host: "127.0.0.1", port: mirrorPort), mode: .sink)
        try mirror.start()
        defer { mirror.stop() }
        #expect(eventually(timeoutSeconds: 5) {
            (try? session(99)) != nil && mirror.connectionRecords().contains { $0.bytesReceived > 0 }
        })
        let mirroredBefore = proxy.mirrorTotal(0) { $0.sessionsMirrored.value }
        for index in 100..<105 { try session(index) }
        #expect(proxy.mirrorTotal(0) { $0.sessionsMirrored.value } == mirroredBefore + 5)
    }

    /// One health state per mirror for the whole process: failures on any
    /// worker put the mirror to rest for all of them. With a state per
    /// worker, each of the four would fail three connects of its own first.
    @Test("four workers back off a refused mirror together", arguments: Config.Backend.tested)
    func backoffSharedByWorkers(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let refusing = RefusingPort()
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [refusing.port]) {
            $0.threads = 4
            // The kernel's hash, so that the sessions reach several workers.
            $0.acceptGathering = .off
            $0.mirrorBackoffInitialMs = 60_000
            $0.mirrorBackoffMaxMs = 60_000
        }
        defer { proxy.shutdown() }
        for index in 0..<40 {
            let connection = try TestConnection(port: proxy.port)
            let message = Array("session \(index)\n".utf8)
            #expect(connection.exchange(message, timeoutSeconds: 5).received == message)
        }
        #expect(proxy.stats.filter { $0.sessionsAccepted.value > 0 }.count >= 2, "the sessions reached several workers")
        #expect(eventually { proxy.activeSessions == 0 })
        let failures = proxy.mirrorTotal(0) { $0.connectFailures.value }
        // Three in a row, and at most one more whose connect was already in flight.
        #expect((3...4).contains(failures), "connect failures \(failures)")
        #expect(proxy.mirrorTotal(0) { $0.sessionsSkipped.value } == 40 - failures)
    }

    /// "At most one line per mirror every 10 seconds" holds for the process,
    /// not per worker (four workers logged 8 lines in 3 s for one refused mirror).
    @Test("a refused mirror is logged once per interval, however many workers", arguments: Config.Backend.tested)
    func mirrorLogSharedByWorkers(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let refusing = RefusingPort()
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(refusing.port)",
                                      "--threads", "4", "--accept-gathering", "off"], port: freePort())
        let start = monotonicSeconds()
        var index = 0
        while monotonicSeconds() - start < 3 {
            let connection = try TestConnection(port: proxy.port)
            let message = Array("session \(index)\n".utf8)
            #expect(connection.exchange(message, timeoutSeconds: 5).received == message)
            index += 1
            usleep(20_000)
        }
        #expect(proxy.signalAndWait(SIGTERM) == 0)
        let lines = proxy.standardError.split(separator: "\n").filter { $0.contains("mirror 127.0.0.1:\(refusing.port)") }
        // The failures, and the start of the back-off: one line each.
        #expect(lines.count == 2, "\(lines.joined(separator: "\n"))")
        #expect(lines.contains { $0.contains("connect failures") })
        #expect(lines.contains { $0.contains("backing off") })
    }

    @Test("the stats line reports rates and mirror trouble")
    func statsLine() {
        let workers = [WorkerStats(mirrorCount: 2)]
        let before = StatsSnapshot(workers: workers, mirrorNames: [":8082", ":8083"], poolSlotsPerWorker: 1024)
        workers[0].sessionsAccepted.bump(20)
        workers[0].sessionsActive.bump(3)
        workers[0].sessionsCompleted.bump(17)
        workers[0].bytesClientToMain.bump(2_000_000)
        workers[0].bytesMainToClient.bump(500)
        workers[0].mirrors[0].bytesSent.bump(2_000_000)
        workers[0].mirrors[1].connectFailures.bump(4)
        workers[0].mirrors[1].sessionsSkipped.bump(16)
        workers[0].mirrors[1].bytesMissed.bump(1_500_000)
        workers[0].mirrors[0].sessionsCutForPoolShare.bump(2)
        workers[0].sessionsEndedByIdleTimeout.bump(5)
        workers[0].sessionsRejected.bump(7)
        workers[0].poolSlotsInUse.store(12, ordering: .relaxed)
        workers[0].poolSlotsGrown.store(64, ordering: .relaxed)
        let after = StatsSnapshot(workers: workers, mirrorNames: [":8082", ":8083"], poolSlotsPerWorker: 1024)
        let line = StatsLine.render(from: before, to: after, seconds: 2)
        #expect(line == "sessions 3 active, +20 new, 22 ended (5 idle timeouts, 7 rejected); client->main 1.0 MB/s, "
            + "main->client 250 B/s; pool 12/64 used/grown of 1024; "
            + "mirror :8082 1.0 MB/s 2 cut for the pool share; mirror :8083 0 B/s 1.5 MB missed, 4 connect failures, 16 sessions skipped")
    }

    @Test("Prometheus label values are escaped")
    func labelEscaping() {
        #expect(PrometheusText.escape(#"a"b\c"# + "\n") == #"a\"b\\c\n"#)
    }
}
