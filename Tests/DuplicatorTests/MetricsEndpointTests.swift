import Foundation
import Glibc
import Synchronization
import Testing
@testable import Duplicator
import LoadTools
import Platform

/// The metrics endpoint beside clients that trickle, idle or crowd in: every
/// scrape is still answered at once, and the process still exits on time.
@Suite("Metrics endpoint: slow and many clients", .timeLimit(.minutes(6)))
struct MetricsEndpointTests {
    static let request = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)

    @Test("a scrape is answered within a second while clients trickle their requests")
    func scrapeBesideTricklers() throws {
        let server = try startMetrics()
        defer { stopWithin(server, seconds: 1) }
        let tricklers = try (0..<3).map { _ in try TricklingClient(port: server.address.port) }
        defer { tricklers.forEach { $0.stop() } }
        usleep(1_500_000)
        #expect(tricklers.allSatisfy { $0.bytesSent.load(ordering: .relaxed) >= 1 }, "every trickler has started its request")
        for round in 0..<3 {
            let start = monotonicSeconds()
            let response = scrape(server.address.port, timeoutSeconds: 1)
            #expect(response?.hasPrefix("HTTP/1.1 200 OK") == true, "round \(round): \(response ?? "no whole response in 1 s")")
            #expect(response?.hasSuffix("\r\n\r\ntest_metric 1\n") == true)
            #expect(monotonicSeconds() - start < 1)
            usleep(700_000)
        }
        // Closed at their deadline, the tricklers came back: each got a connection more than once.
        #expect(tricklers.allSatisfy { $0.connects.load(ordering: .relaxed) >= 2 })
    }

    @Test("20 concurrent scrapes beside tricklers are all answered")
    func concurrentScrapes() throws {
        let server = try startMetrics()
        defer { stopWithin(server, seconds: 1) }
        let tricklers = try (0..<2).map { _ in try TricklingClient(port: server.address.port) }
        defer { tricklers.forEach { $0.stop() } }
        usleep(1_200_000)
        let answered = Atomic<Int>(0)
        let port = server.address.port
        let start = monotonicSeconds()
        try concurrently(20) { _ in
            if scrape(port, timeoutSeconds: 2)?.hasPrefix("HTTP/1.1 200 OK") == true { answered.add(1, ordering: .relaxed) }
        }
        #expect(answered.load(ordering: .relaxed) == 20)
        #expect(monotonicSeconds() - start < 2)
    }

    /// 64 connections at once; the rest are closed as they arrive, and no
    /// connection outlives its 2 s deadline, request or not.
    @Test("beyond 64 connections new ones are closed at once; idle ones at their deadline")
    func boundAndDeadline() throws {
        let server = try startMetrics()
        defer { stopWithin(server, seconds: 1) }
        let start = monotonicSeconds()
        let idle = try (0..<70).map { _ in try TestConnection(port: server.address.port) }
        usleep(500_000)
        #expect(idle.filter(isClosedByPeer).count == 6, "the 6 beyond the bound")
        #expect(eventually(timeoutSeconds: 4) { idle.allSatisfy(isClosedByPeer) })
        let elapsed = monotonicSeconds() - start
        #expect(elapsed >= 1.8 && elapsed < 3.5, "closed after \(elapsed) s")
        #expect(scrape(server.address.port, timeoutSeconds: 1)?.hasPrefix("HTTP/1.1 200 OK") == true)
    }

    @Test("HTTP: GET and HEAD /metrics, 404, 405, a request in small pieces")
    func httpBehaviour() throws {
        let server = try startMetrics()
        defer { stopWithin(server, seconds: 1) }
        let port = server.address.port
        func ask(_ text: String, pieceMax: Int = 65536) -> String {
            scrape(port, Array(text.utf8), pieceMax: pieceMax, timeoutSeconds: 2) ?? "no response"
        }
        let get = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", pieceMax: 3)
        #expect(get.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(get.contains("Content-Length: 14\r\n") && get.contains("Connection: close\r\n"))
        #expect(get.hasSuffix("\r\n\r\ntest_metric 1\n"))
        let head = ask("HEAD /metrics HTTP/1.0\r\n\r\n")
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n") && head.contains("Content-Length: 14\r\n") && head.hasSuffix("\r\n\r\n"))
        #expect(ask("GET /metrics?name[]=x HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(ask("GET / HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(ask("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"))
    }

    /// The drain ends on time however a scraper behaves: the endpoint never
    /// delays the exit past --drain-timeout.
    @Test("SIGTERM with a trickling scraper exits within the drain timeout")
    func termWithTrickler() throws {
        let main = try startServer(.stall)
        defer { main.stop() }
        let metricsPort = freePort()
        let proxy = try ProxyProcess(["-f", "127.0.0.1:\(main.boundPort)", "--drain-timeout", "2s",
                                      "--metrics", "127.0.0.1:\(metricsPort)"], port: freePort())
        let held = try TestConnection(port: proxy.port)
        _ = held.exchange(Array("held open".utf8), shutdownAfterSending: false, timeoutSeconds: 0.3)
        let trickler = try TricklingClient(port: metricsPort)
        defer { trickler.stop() }
        usleep(1_500_000)
        if Peers.runnable("curl") {
            let curl = try runProgram(try Peers.require("curl"), ["-sS", "-m", "1", "http://127.0.0.1:\(metricsPort)/metrics"])
            #expect(curl.status == 0, "curl: \(curl.standardError)")
            #expect(curl.standardOutput.contains("duplicator_sessions_accepted_total "))
        }
        let start = monotonicSeconds()
        kill(proxy.process.processIdentifier, SIGTERM)
        #expect(eventually(timeoutSeconds: 2 + 1.5) { !proxy.process.isRunning })
        let elapsed = monotonicSeconds() - start
        #expect(elapsed >= 1.8 && elapsed < 3.5, "exited after \(elapsed) s with a 2 s drain")
        if !proxy.process.isRunning {
            proxy.process.waitUntilExit()
            #expect(proxy.process.terminationStatus == 0)
        }
    }

    @Test("a second SIGTERM with a trickling scraper exits at once")
    func secondTermWithTrickler() throws {
        let main = try startServer(.stall)
        defer { main.stop() }
        let metricsPort = freePort()
        let proxy = try ProxyProcess(["-f", "127.0.0.1:\(main.boundPort)", "--drain-timeout", "60s",
                                      "--metrics", "127.0.0.1:\(metricsPort)"], port: freePort())
        let held = try TestConnection(port: proxy.port)
        _ = held.exchange(Array("held open".utf8), shutdownAfterSending: false, timeoutSeconds: 0.3)
        let trickler = try TricklingClient(port: metricsPort)
        defer { trickler.stop() }
        usleep(1_500_000)
        kill(proxy.process.processIdentifier, SIGTERM)
        // Two signals pending at once are one: send the second once the first is taken.
        #expect(proxy.readStandardError(until: "draining").contains("draining"))
        #expect(proxy.process.isRunning, "draining the held session")
        let start = monotonicSeconds()
        #expect(proxy.signalAndWait(SIGTERM, timeoutSeconds: 3) == 0)
        #expect(monotonicSeconds() - start < 1.5)
    }

    // MARK: helpers

    private func startMetrics() throws -> MetricsServer {
        try MetricsServer(endpoint: try Endpoint(parsing: "127.0.0.1:0", role: .listen)) { "test_metric 1\n" }
    }

    /// Stops the server on another thread and records an issue if that
    /// takes longer than `seconds` (without hanging the test run on it).
    private func stopWithin(_ server: MetricsServer, seconds: Double) {
        let stopped = Atomic<Bool>(false)
        let start = monotonicSeconds()
        guard let thread = try? spawnThread({
            server.stop()
            stopped.store(true, ordering: .releasing)
        }) else { return }
        thread.detach()
        #expect(eventually(timeoutSeconds: seconds) { stopped.load(ordering: .acquiring) },
                "stop() still waiting after \(monotonicSeconds() - start) s")
    }
}

/// One request over a plain socket: the whole response (the server closed
/// after it), or nil if it did not come within `timeoutSeconds`.
func scrape(_ port: UInt16, _ request: [UInt8] = MetricsEndpointTests.request, pieceMax: Int = 65536,
            timeoutSeconds: Double) -> String? {
    guard let connection = try? TestConnection(port: port, timeoutSeconds: timeoutSeconds) else { return nil }
    let (received, end) = connection.exchange(request, pieceMax: pieceMax, shutdownAfterSending: false,
                                              timeoutSeconds: timeoutSeconds)
    guard end == .eof else { return nil }
    return String(decoding: received, as: UTF8.self)
}

/// Whether the server closed (or reset) this connection.
func isClosedByPeer(_ connection: TestConnection) -> Bool {
    var byte: UInt8 = 0
    let count = recv(connection.fd, &byte, 1, Int32(MSG_DONTWAIT))
    return count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
}

/// A slowloris scraper: sends a request one byte a second and never ends its
/// head; when the server closes it, it connects again. On its own thread.
final class TricklingClient: Sendable {
    let connects = Atomic<Int>(0)
    let bytesSent = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    init(port: UInt16, intervalMs: Int = 1000) throws {
        try detachedThread { [self] in run(port: port, intervalMs: intervalMs) }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .acquiring) { usleep(1000) }
    }

    private func run(port: UInt16, intervalMs: Int) {
        defer { finished.store(true, ordering: .releasing) }
        let head = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".utf8)
        while !stopping.load(ordering: .relaxed) {
            guard let connection = try? TestConnection(port: port, timeoutSeconds: 1) else {
                usleep(100_000)
                continue
            }
            connects.add(1, ordering: .relaxed)
            var offset = 0
            trickling: while !stopping.load(ordering: .relaxed) {
                var byte = offset < head.count ? head[offset] : 0x61
                guard send(connection.fd, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { break }
                offset += 1
                bytesSent.add(1, ordering: .relaxed)
                // Wait for the next byte in short steps: stop promptly, and see the server close.
                for _ in 0..<(intervalMs / 50) {
                    if stopping.load(ordering: .relaxed) || isClosedByPeer(connection) { break trickling }
                    usleep(50_000)
                }
            }
        }
    }
}
