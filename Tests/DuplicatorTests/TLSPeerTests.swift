import Foundation
import Glibc
import Testing
@testable import Duplicator

/// TLS termination in front of the peers users have (issue 22): Redis's own
/// TLS clients, and HTTP/2 negotiated by ALPN. The proxy terminates TLS;
/// main and the mirror are plaintext servers and must end with the same
/// state (redis) or the same requests (nginx speaking h2c).
@Suite("TLS termination: redis-benchmark --tls and h2load over ALPN h2", .serialized, .timeLimit(.minutes(6)))
struct TLSPeerTests {
    let certificates: TestCertificates
    let peers = RealPeerTests()

    init() throws { certificates = try TestCertificates() }

    @Test("redis-benchmark --tls through the proxy to plaintext redis main and mirror: no errors, the mirror ends with main's dataset",
          .enabled(if: Peers.runnable("redis-server", "redis-cli", "redis-benchmark", "openssl"), "needs redis and openssl"),
          arguments: Config.Backend.tested)
    func redisBenchmarkOverTLS(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["main", "mirror"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + name, withIntermediateDirectories: true)
        }
        let main = try peers.redis(directory + "/main")
        let mirror = try peers.redis(directory + "/mirror")
        let settings = try certificates.serverSettings()
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.port]) { $0.tls = settings }
        defer { proxy.shutdown() }

        let benchmark = try runProgram(try Peers.require("redis-benchmark"),
                                       ["--tls", "--cacert", certificates.certificatePath, "-h", "127.0.0.1",
                                        "-p", "\(proxy.port)", "-c", "20", "-n", "5000", "-P", "8", "-r", "500",
                                        "-t", "set,incr,lpush", "-q"], timeoutSeconds: 60)
        let output = benchmark.standardOutput + benchmark.standardError
        #expect(benchmark.status == 0, "redis-benchmark: \(output)")
        #expect(output.contains("SET:") && output.contains("INCR:") && output.contains("LPUSH:"), "\(output)")
        #expect(!output.lowercased().contains("error"), "\(output)")

        let cli = try runProgram(try Peers.require("redis-cli"),
                                 ["--tls", "--cacert", certificates.certificatePath, "-h", "127.0.0.1",
                                  "-p", "\(proxy.port)", "SET", "over-tls", "plaintext behind"], timeoutSeconds: 15)
        #expect(cli.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "OK", "\(cli.standardError)")
        #expect(try peers.redisCLI(main.port, ["GET", "over-tls"]) == "plaintext behind")
        #expect(Int(try peers.redisCLI(main.port, ["DBSIZE"])) ?? 0 > 100)
        #expect(eventually(timeoutSeconds: 10) {
            (try? peers.redisCLI(mirror.port, ["DEBUG", "DIGEST"])) == (try? peers.redisCLI(main.port, ["DEBUG", "DIGEST"]))
        }, "the mirror's dataset is main's")
        #expect(eventually { proxy.activeSessions == 0 })
        #expect(proxy.total { $0.sessionsEndedByTLSHandshake.value } == 0)
    }

    @Test("h2load over TLS with ALPN h2 to an h2c nginx main and mirror: every request succeeds and reaches both",
          .enabled(if: Peers.runnable("nginx", "h2load"), "needs nginx and h2load (nghttp2-client)"),
          arguments: Config.Backend.tested)
    func h2loadWithALPN(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try h2cNginx(directory + "/main")
        let mirror = try h2cNginx(directory + "/mirror")
        let settings = try certificates.serverSettings(alpn: ["h2", "http/1.1"])
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.port]) { $0.tls = settings }
        defer { proxy.shutdown() }

        let load = try runProgram(try Peers.require("h2load"),
                                  ["-n", "400", "-c", "4", "-m", "8", "https://localhost:\(proxy.port)/h2-load"],
                                  timeoutSeconds: 60)
        #expect(load.status == 0, "\(load.standardError)")
        #expect(load.standardOutput.contains("Application protocol: h2"), "\(load.standardOutput)")
        #expect(load.standardOutput.contains("requests: 400 total, 400 started, 400 done, 400 succeeded"),
                "\(load.standardOutput)")
        func logged(_ server: RealPeerTests.ServerProcess) -> Int {
            let text = (try? String(contentsOfFile: server.directory + "/access.log", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").filter { $0.contains("/h2-load HTTP/2.0\" 200") }.count
        }
        #expect(eventually { logged(main) == 400 }, "main logged \(logged(main))")
        #expect(eventually { logged(mirror) == 400 }, "mirror logged \(logged(mirror))")
        #expect(eventually { proxy.activeSessions == 0 })
    }

    /// nginx speaking HTTP/2 in plaintext with prior knowledge (h2c): what
    /// an HTTP/2 service behind a TLS-terminating proxy is.
    func h2cNginx(_ directory: String) throws -> RealPeerTests.ServerProcess {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let port = freePort()
        let temporary = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .map { "\($0)_temp_path \(directory)/\($0);" }.joined(separator: " ")
        let config = """
        worker_processes 1;
        daemon off;
        error_log \(directory)/error.log;
        pid \(directory)/nginx.pid;
        events { worker_connections 256; }
        http {
            access_log \(directory)/access.log;
            \(temporary)
            server {
                listen 127.0.0.1:\(port) http2;
                location / { return 200 "hello over h2\\n"; }
            }
        }
        """
        try config.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        return try RealPeerTests.ServerProcess(try Peers.require("nginx"), ["-p", directory, "-c", directory + "/nginx.conf"],
                                               port: port, directory: directory)
    }
}
