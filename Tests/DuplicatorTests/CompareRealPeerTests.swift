import Foundation
import Glibc
import Testing
@testable import Duplicator

/// `--compare` with a real server: redis as main, a baseline redis with the
/// same data, and a candidate redis whose data differs in one key. Only the
/// sessions that read that key diverge on the candidate; the baseline
/// matches everywhere (Diffy's noise method, with no noise).
@Suite("Compare: redis baseline and candidate", .serialized, .timeLimit(.minutes(6)))
struct CompareRealPeerTests {
    @Test("sessions that read the changed key diverge on the candidate; the others match, and the baseline matches",
          .enabled(if: Peers.runnable("redis-server", "redis-cli"), "needs redis-server and redis-tools"),
          arguments: Config.Backend.tested)
    func redisBaselineAndCandidate(backend: Config.Backend) throws {
        let peers = RealPeerTests()
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["main", "baseline", "candidate"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + name, withIntermediateDirectories: true)
        }
        let main = try peers.redis(directory + "/main")
        let baseline = try peers.redis(directory + "/baseline")
        let candidate = try peers.redis(directory + "/candidate")
        let keys = 20
        let data = (0..<keys).flatMap { ["k\($0)", "value-\($0)"] }
        for server in [main, baseline, candidate] {
            #expect(try peers.redisCLI(server.port, ["MSET"] + data) == "OK")
        }
        #expect(try peers.redisCLI(candidate.port, ["SET", "k7", "changed-value"]) == "OK")

        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [baseline.port, candidate.port]) {
            $0.compare = true
            $0.mirrorLingerMs = 5_000
        }
        defer { proxy.shutdown() }
        // Session i reads k(i) and k(i+1): sessions 6 and 7 touch k7.
        func bulk(_ value: String) -> String { "$\(value.utf8.count)\r\n\(value)\r\n" }
        for index in 0..<keys {
            let next = (index + 1) % keys
            let request = Array("GET k\(index)\r\nGET k\(next)\r\n".utf8)
            let expected = Array((bulk("value-\(index)") + bulk("value-\(next)")).utf8)
            let connection = try TestConnection(port: proxy.port)
            // Both replies before our EOF: redis may close on EOF before it writes.
            let (received, _) = connection.exchange(request, shutdownAfterSending: false, timeoutSeconds: 10,
                                                   expectBytes: expected.count)
            #expect(received == expected, "session \(index): \(String(decoding: received, as: UTF8.self))")
            let (rest, end) = connection.exchange([], timeoutSeconds: 10)
            #expect(rest.isEmpty && end == .eof, "session \(index)")
        }
        #expect(eventually(timeoutSeconds: 15) { proxy.activeSessions == 0 })
        let snapshot = proxy.snapshot()
        #expect(snapshot.mirrors[0].compared == [UInt64(keys), 0, 0, 0, 0], "baseline: \(snapshot.mirrors[0].compared)")
        #expect(snapshot.mirrors[1].compared == [UInt64(keys - 2), 2, 0, 0, 0], "candidate: \(snapshot.mirrors[1].compared)")
        // Session 7 differs in its first reply's length line (offset 1), session 6 in its second reply's.
        let firstReply = UInt64(bulk("value-6").utf8.count)
        #expect(snapshot.mirrors[1].divergenceOffsetSum == 1 + firstReply + 1)
    }
}
