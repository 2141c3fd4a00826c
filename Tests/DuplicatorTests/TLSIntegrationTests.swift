import Foundation
import Glibc
import Synchronization
import Testing
@testable import Duplicator
import LoadTools

/// Promise 11 over real loopback sockets, on both backends: the proxy
/// terminates TLS (`--tls-cert`), main and the mirror get the plaintext,
/// exactly; clients that fail their handshake end alone, counted, and leave
/// no descriptor or slot behind.
@Suite("TLS termination: real clients through the proxy", .serialized, .timeLimit(.minutes(6)))
struct TLSIntegrationTests {
    let certificates: TestCertificates

    init() throws { certificates = try TestCertificates() }

    var tlsArguments: [String] { ["--tls-cert", certificates.certificatePath, "--tls-key", certificates.keyPath] }

    @Test("openssl s_client with TLS 1.2 and 1.3 through the proxy: the echo comes back, main and the mirror got the plaintext exactly",
          .enabled(if: Peers.runnable("openssl"), "needs openssl"), arguments: Config.Backend.tested)
    func sClientEchoAndMirror(backend: Config.Backend) throws {
        let (main, mirror, metricsPort, proxy) = try echoPeersAndProxy(backend: backend)
        defer { main.stop(); mirror.stop() }
        let payloads = (0..<2).map { index in
            Array((0..<2000).map { "line \($0) of session \(index) \(String(repeating: "x", count: $0 % 40))\n" }.joined().utf8)
        }
        for (index, version) in ["-tls1_2", "-tls1_3"].enumerated() {
            let echoed = try sClient(port: proxy.port, options: [version], payload: payloads[index])
            #expect(echoed == payloads[index], "\(version): \(echoed.count) of \(payloads[index].count) bytes echoed")
        }
        // The readiness probe of ProxyProcess (a plain connect) is a third, plaintext client.
        #expect(receivedStreams(main, count: 2) == streamSignatures(payloads))
        #expect(receivedStreams(mirror, count: 2) == streamSignatures(payloads))
        #expect(eventually { metric(metricsPort, "duplicator_sessions_ended_total{cause=\"completed\"}") == 2 })
        #expect(eventually { metric(metricsPort, "duplicator_pool_slots_in_use") == 0 })
        #expect(metric(metricsPort, "duplicator_tls_errors_total") == 0)
    }

    @Test("plaintext, a truncated ClientHello, a client that stalls mid-handshake, garbage after the handshake: each ends alone, counted, nothing leaked",
          arguments: Config.Backend.tested)
    func badClientsEndAlone(backend: Config.Backend) throws {
        let (main, mirror, metricsPort, proxy) = try echoPeersAndProxy(backend: backend, ["--tls-handshake-timeout", "1s"])
        defer { main.stop(); mirror.stop() }
        // The readiness probe's failed handshake first.
        #expect(eventually { metric(metricsPort, "duplicator_sessions_ended_total{cause=\"tls_handshake\"}") == 1 })
        let failedBefore = 1
        let descriptorsBefore = try #require(proxy.settledDescriptorCount())
        let client = try certificates.clientContext()

        // A well-behaved client, live through all of it.
        let good = try TLSTestClient(port: proxy.port, context: client)
        #expect(try good.echo(Array("before\n".utf8)) == Array("before\n".utf8))

        let plaintext = try TestConnection(port: proxy.port)
        _ = plaintext.exchange(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), shutdownAfterSending: false, timeoutSeconds: 5)

        let hello = TLSTestClient.clientHello(context: client)
        let truncated = try TestConnection(port: proxy.port)
        let truncatedEnd = truncated.exchange(Array(hello[0..<(hello.count / 2)]), timeoutSeconds: 5).end
        #expect(truncatedEnd != .timeout, "a ClientHello cut short by the client's FIN was not ended")

        let stalled = try TestConnection(port: proxy.port)
        let started = monotonicSeconds()
        let stalledEnd = stalled.exchange(Array(hello[0..<(hello.count / 2)]), shutdownAfterSending: false, timeoutSeconds: 5).end
        #expect(stalledEnd != .timeout, "a handshake that stalled was not ended by --tls-handshake-timeout")
        #expect(monotonicSeconds() - started >= 0.8, "ended before the handshake timeout")

        #expect(eventually {
            metric(metricsPort, "duplicator_sessions_ended_total{cause=\"tls_handshake\"}") == UInt64(failedBefore + 3)
        })
        // Nothing of the three reached main or the mirror.
        #expect(main.connectionsAccepted == 1 && mirror.connectionsAccepted == 1)

        let garbled = try TLSTestClient(port: proxy.port, context: client)
        garbled.sendRaw([0x17, 0x03, 0x03, 0x00, 0x20] + [UInt8](repeating: 0xab, count: 32))
        #expect(garbled.waitForEnd(timeoutSeconds: 5), "garbage after the handshake did not end the session: \(proxy.standardError)")
        #expect(eventually { metric(metricsPort, "duplicator_tls_errors_total") == 1 })
        #expect(eventually { metric(metricsPort, "duplicator_sessions_ended_total{cause=\"client_error\"}") == 1 })

        #expect(try good.echo(Array("after\n".utf8)) == Array("after\n".utf8), "the good client's session did not survive")
        good.close()
        #expect(eventually { metric(metricsPort, "duplicator_sessions_active") == 0 })
        #expect(eventually { metric(metricsPort, "duplicator_pool_slots_in_use") == 0 })
        #expect(eventually { metric(metricsPort, "duplicator_tls_handshakes_active") == 0 })
        #expect(proxy.settledDescriptorCount() == descriptorsBefore, "descriptors leaked")
    }

    @Test("curl over HTTPS through the proxy to nginx main and nginx mirror: every request in the mirror's access log",
          .enabled(if: Peers.runnable("nginx", "curl"), "needs nginx and curl"), arguments: Config.Backend.tested)
    func curlToNginx(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["main", "mirror"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + name, withIntermediateDirectories: true)
        }
        let peers = RealPeerTests()
        let main = try peers.nginx(directory + "/main")
        let mirror = try peers.nginx(directory + "/mirror")
        func logged(_ server: RealPeerTests.ServerProcess) -> [Substring] {
            let text = (try? String(contentsOfFile: server.directory + "/access.log", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").filter { $0.contains("/tls-") }
        }
        let settings = try certificates.serverSettings(alpn: ["http/1.1"])
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.port]) { $0.tls = settings }
        defer { proxy.shutdown() }
        let urls = (0..<20).map { "https://localhost:\(proxy.port)/tls-\($0)" }
        // One connection, keep-alive: 20 requests over one TLS session; then one connection each.
        let keptAlive = try runProgram(try Peers.require("curl"), ["-sS", "--cacert", certificates.certificatePath] + urls,
                                       timeoutSeconds: 30)
        #expect(keptAlive.status == 0, "\(keptAlive.standardError)")
        #expect(keptAlive.standardOutput.components(separatedBy: "hello from \(main.port)").count - 1 == 20)
        for url in urls.prefix(5) {
            let single = try runProgram(try Peers.require("curl"), ["-sS", "--tlsv1.2", "--tls-max", "1.2", "--cacert",
                                                                    certificates.certificatePath, url], timeoutSeconds: 10)
            #expect(single.status == 0 && single.standardOutput == "hello from \(main.port)\n", "\(single.standardError)")
        }
        #expect(eventually { logged(main).count == 25 }, "main logged \(logged(main).count)")
        #expect(eventually { logged(mirror).count == 25 }, "mirror logged \(logged(mirror).count)")
        let paths = { (lines: [Substring]) in lines.compactMap { $0.split(separator: "\"").dropFirst().first }.sorted() }
        #expect(paths(logged(mirror)) == paths(logged(main)))
        #expect(eventually { proxy.activeSessions == 0 })
        #expect(proxy.total { $0.sessionsEndedByTLSHandshake.value } == 0)
    }

    @Test("--forward-tls to an nginx TLS main (verified against --forward-ca) and --mirror-tls to an nginx TLS mirror; a wrong CA fails the session as main_connect_failure",
          .enabled(if: Peers.runnable("nginx", "curl"), "needs nginx and curl"), arguments: Config.Backend.tested)
    func forwardAndMirrorTLS(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try nginxTLS(directory + "/main")
        let mirror = try nginxTLS(directory + "/mirror")
        func logged(_ server: RealPeerTests.ServerProcess) -> Int {
            let text = (try? String(contentsOfFile: server.directory + "/access.log", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").filter { $0.contains("/upstream-") }.count
        }
        let verified = try UpstreamTLSSettings(caPath: certificates.certificatePath, serverName: "localhost")
        let mirrorVerified = try UpstreamTLSSettings(caPath: certificates.certificatePath, serverName: nil, caFlag: "--mirror-ca")
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.port]) {
            $0.forwardTLS = verified
            $0.mirrorTLS = mirrorVerified
        }
        let urls = (0..<5).map { "http://127.0.0.1:\(proxy.port)/upstream-\($0)" }
        let result = try runProgram(try Peers.require("curl"), ["-sS"] + urls, timeoutSeconds: 30)
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput == String(repeating: "hello over tls\n", count: 5))
        #expect(eventually { logged(main) == 5 }, "main logged \(logged(main))")
        #expect(eventually { logged(mirror) == 5 }, "the TLS mirror logged \(logged(mirror))")
        #expect(eventually { proxy.activeSessions == 0 })
        proxy.shutdown()

        let other = try certificates.another("wrong-ca")
        let wrong = try UpstreamTLSSettings(caPath: other.certificatePath, serverName: "localhost")
        let refusing = try startProxy(backend: backend, main: main.port, mirrors: []) { $0.forwardTLS = wrong }
        defer { refusing.shutdown() }
        let refused = try runProgram(try Peers.require("curl"), ["-sS", "http://127.0.0.1:\(refusing.port)/upstream-wrong"],
                                     timeoutSeconds: 15)
        #expect(refused.status != 0, "a main whose certificate does not verify was sent the request")
        #expect(eventually { refusing.total { $0.sessionsEndedByMainConnectFailure.value } == 1 })
        #expect(logged(main) == 5, "the request reached main over an unverified connection")
    }

    @Test("an unreadable or mismatched certificate or key: one line and a non-zero exit, at start and with --check")
    func badFilesAreOneLine() throws {
        let binary = try builtBinary("duplicator")
        let other = try certificates.another("other")
        let base = ["-l", "127.0.0.1:0", "-f", "127.0.0.1:1"]
        let cases: [([String], String)] = [
            (["--tls-cert", certificates.folder + "/missing.pem", "--tls-key", certificates.keyPath], "No such file"),
            (["--tls-cert", certificates.certificatePath, "--tls-key", other.keyPath], "does not match"),
            (["--tls-cert", certificates.keyPath, "--tls-key", certificates.keyPath], "not a PEM certificate"),
            (["--tls-cert", certificates.certificatePath], "--tls-cert needs --tls-key"),
            (["--forward-tls", "--forward-ca", certificates.folder + "/missing.pem"], "--forward-ca"),
        ]
        for (arguments, expected) in cases {
            for check in [[], ["--check"]] {
                let result = try runProgram(binary, base + arguments + check, timeoutSeconds: 10)
                #expect(result.status != 0, "\(arguments) \(check) was accepted")
                #expect(result.errorLines.count == 1 && result.standardError.contains(expected), "\(arguments): \(result.standardError)")
            }
        }
        let fine = try runProgram(binary, base + tlsArguments + ["--check"], timeoutSeconds: 10)
        #expect(fine.status == 0, "\(fine.standardError)")
        #expect(fine.standardOutput.contains("TLS from clients: certificate \(certificates.certificatePath)"))
    }

    @Test("SIGHUP reads the certificate and key again: a renewal under the same paths reaches new clients; a bad key changes nothing",
          .enabled(if: Peers.runnable("openssl"), "needs openssl"), arguments: Config.Backend.tested)
    func reloadRenewsTheCertificate(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        // The files the proxy reads, and a renewal (another key) written over them later.
        let live = (certificates.folder + "/live.crt", certificates.folder + "/live.key")
        let renewed = try certificates.another("renewed")
        try FileManager.default.copyItem(atPath: certificates.certificatePath, toPath: live.0)
        try FileManager.default.copyItem(atPath: certificates.keyPath, toPath: live.1)
        let yaml = "forward: 127.0.0.1:\(main.boundPort)\ntls-cert: \(live.0)\ntls-key: \(live.1)\n"
        let proxy = try ReloadingProxy(backend: backend, config: yaml)
        #expect(try verifies(port: proxy.port, caPath: certificates.certificatePath))
        #expect(try !verifies(port: proxy.port, caPath: renewed.certificatePath))

        // A key that does not match the certificate: refused, the old pair kept.
        try FileManager.default.removeItem(atPath: live.1)
        try FileManager.default.copyItem(atPath: renewed.keyPath, toPath: live.1)
        let refused = try #require(try proxy.reload(yaml))
        #expect(refused.contains("does not match"), "\(refused)")
        #expect(try verifies(port: proxy.port, caPath: certificates.certificatePath))

        try FileManager.default.removeItem(atPath: live.0)
        try FileManager.default.copyItem(atPath: renewed.certificatePath, toPath: live.0)
        let applied = try #require(try proxy.reload(yaml))
        #expect(applied.contains("reloaded") && applied.contains("tls-cert"), "\(applied)")
        #expect(try verifies(port: proxy.port, caPath: renewed.certificatePath))
        #expect(try !verifies(port: proxy.port, caPath: certificates.certificatePath))
        #expect(proxy.stop() == 0)
    }

    @Test("--accept-proxy over TLS: the PROXY header in plaintext before the ClientHello; main gets the client's address from it (--send-proxy) and then the plaintext",
          arguments: Config.Backend.tested)
    func proxyHeaderBeforeTheClientHello(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let settings = try certificates.serverSettings()
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: []) {
            $0.tls = settings
            $0.acceptProxy = true
            $0.sendProxy = .v1
        }
        defer { proxy.shutdown() }
        let header = Array("PROXY TCP4 192.0.2.1 192.0.2.2 40000 443\r\n".utf8)
        let client = try certificates.clientContext()
        let connection = try TLSTestClient(port: proxy.port, context: client, prefix: header)
        let payload = Array("through TLS behind a balancer\n".utf8)
        // The echo main sends back what it got: the header main was sent, then the payload.
        #expect(try connection.echo(payload, expectedBytes: header.count + payload.count) == header + payload)
        connection.close()
        #expect(receivedStreams(main, count: 1) == streamSignatures([header + payload]))
        // Without a header, the handshake never starts: counted as a bad PROXY header.
        let bare = try TLSTestClient.attempt(port: proxy.port, context: client)
        #expect(!bare, "a client without a PROXY header was let through")
        #expect(eventually { proxy.total { $0.sessionsEndedByBadProxyHeader.value } == 1 })
    }

    @Test("--compare over TLS: the plaintext replies of main and an echo mirror are compared, verdict match",
          arguments: Config.Backend.tested)
    func compareOverTLS(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.echo)
        defer { mirror.stop() }
        let settings = try certificates.serverSettings()
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0.tls = settings
            $0.compare = true
        }
        defer { proxy.shutdown() }
        let client = try certificates.clientContext()
        let connection = try TLSTestClient(port: proxy.port, context: client)
        let payload = Array(String(repeating: "compared over TLS\n", count: 500).utf8)
        #expect(try connection.echo(payload) == payload)
        connection.close()
        #expect(eventually { proxy.mirrorTotal(0) { $0.comparisons.count(.match) } == 1 })
        #expect(proxy.mirrorTotal(0) { $0.comparisons.count(.diverged) } == 0)
    }

    // MARK: - Helpers

    /// An echo main, an echo mirror, and the proxy in front of them (a
    /// process of its own, `--tls-cert`, `--metrics` on its port, and `extra`).
    func echoPeersAndProxy(backend: Config.Backend, _ extra: [String] = []) throws
        -> (main: TestServer, mirror: TestServer, metricsPort: UInt16, proxy: ProxyProcess) {
        let main = try startServer(.echo)
        let mirror: TestServer
        do { mirror = try startServer(.echo) } catch {
            main.stop()
            throw error
        }
        let metricsPort = freePort()
        do {
            let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(mirror.boundPort)",
                                                             "--metrics", "127.0.0.1:\(metricsPort)"] + tlsArguments + extra,
                                         port: freePort())
            return (main, mirror, metricsPort, proxy)
        } catch {
            main.stop()
            mirror.stop()
            throw error
        }
    }

    /// Whether a TLS 1.3 handshake through the proxy verifies against `caPath` (s_client's exit status).
    func verifies(port: UInt16, caPath: String) throws -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Peers.require("openssl"))
        process.arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", caPath, "-servername", "localhost",
                             "-verify_return_error", "-brief"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        guard eventually(timeoutSeconds: 10, { !process.isRunning }) else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TestFailure("s_client did not finish")
        }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }

    /// nginx over TLS (the test certificate) answering "hello over tls" at every path.
    func nginxTLS(_ directory: String) throws -> RealPeerTests.ServerProcess {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for path in [certificates.folder, directory] { chmod(path, 0o755) }
        chmod(certificates.keyPath, 0o644)
        let port = freePort()
        return try RealPeerTests.startNginx(directory, port: port, workerConnections: 256, server: """
            listen 127.0.0.1:\(port) ssl;
            ssl_certificate \(certificates.certificatePath);
            ssl_certificate_key \(certificates.keyPath);
            location / { return 200 "hello over tls\\n"; }
            """)
    }

    /// `openssl s_client` with `payload` on its stdin: what it printed once
    /// as many bytes came back (or 15 s passed); then its stdin closes.
    func sClient(port: UInt16, options: [String], payload: [UInt8]) throws -> [UInt8] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Peers.require("openssl"))
        process.arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-quiet", "-no_ign_eof", "-CAfile",
                             certificates.certificatePath, "-servername", "localhost"] + options
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        // Written on a thread of its own: s_client stops reading its stdin
        // while its stdout is full, and more than a pipe holds comes back.
        let writer = input.fileHandleForWriting
        let written = Atomic<Bool>(false)
        try detachedThread {
            try? writer.write(contentsOf: Data(payload))
            written.store(true, ordering: .releasing)
        }
        var received: [UInt8] = []
        let reader = output.fileHandleForReading.fileDescriptor
        let deadline = monotonicSeconds() + 15
        var buffer = [UInt8](repeating: 0, count: 65536)
        while received.count < payload.count && monotonicSeconds() < deadline {
            var entry = pollfd(fd: reader, events: Int16(POLLIN), revents: 0)
            guard Glibc.poll(&entry, 1, 100) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { Glibc.read(reader, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            received += buffer[0..<count]
        }
        _ = eventually(timeoutSeconds: 5) { written.load(ordering: .acquiring) }
        try writer.close()
        _ = eventually(timeoutSeconds: 5) { !process.isRunning }
        return received
    }
}

/// A metric's value on the proxy's /metrics (the line that starts with `name`), or nil.
func metric(_ port: UInt16, _ name: String) -> UInt64? {
    let request = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard let text = scrape(port, request, timeoutSeconds: 5) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
        return UInt64(line.dropFirst(name.count + 1))
    }
    return nil
}

/// A TLS client over a blocking loopback socket, with the proxy's own TLSStream.
final class TLSTestClient {
    let connection: TestConnection
    let stream: TLSStream

    /// - Parameter prefix: plaintext sent before the ClientHello (a PROXY protocol header).
    init(port: UInt16, context: TLSContext, prefix: [UInt8] = [], timeoutSeconds: Double = 5) throws {
        connection = try TestConnection(port: port)
        stream = TLSStream(context: context)
        if !prefix.isEmpty { sendRaw(prefix) }
        let deadline = monotonicSeconds() + timeoutSeconds
        while stream.handshake() == .inProgress && monotonicSeconds() < deadline {
            flush()
            _ = receive(timeoutSeconds: 0.1)
        }
        flush()
        guard stream.state == .established else { throw TestFailure("handshake through the proxy: \(stream.state)") }
    }

    /// Whether a handshake through the proxy succeeds.
    static func attempt(port: UInt16, context: TLSContext) throws -> Bool {
        do {
            _ = try TLSTestClient(port: port, context: context, timeoutSeconds: 3)
            return true
        } catch let failure as TestFailure where failure.description.hasPrefix("handshake") {
            return false
        }
    }

    /// A ClientHello, as the first flight of a client of `context`.
    static func clientHello(context: TLSContext) -> [UInt8] {
        let stream = TLSStream(context: context)
        stream.handshake()
        var hello = [UInt8](repeating: 0, count: stream.ciphertextBytesPending)
        _ = hello.withUnsafeMutableBytes { stream.takeCiphertext(into: $0) }
        return hello
    }

    /// Sends `bytes` and reads until as many came back.
    func echo(_ bytes: [UInt8], expectedBytes: Int? = nil, timeoutSeconds: Double = 5) throws -> [UInt8] {
        let expected = expectedBytes ?? bytes.count
        _ = bytes.withUnsafeBytes { stream.write($0) }
        flush()
        var received: [UInt8] = []
        let deadline = monotonicSeconds() + timeoutSeconds
        while received.count < expected && monotonicSeconds() < deadline {
            let (plain, _) = stream.readAll()
            received += plain
            if received.count >= expected { break }
            guard receive(timeoutSeconds: 0.1) != false else { break }
        }
        return received
    }

    func sendRaw(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Whether the proxy closed (EOF or reset) within `timeoutSeconds`.
    func waitForEnd(timeoutSeconds: Double) -> Bool {
        let deadline = monotonicSeconds() + timeoutSeconds
        while monotonicSeconds() < deadline {
            if receive(timeoutSeconds: 0.1) == false { return true }
        }
        return false
    }

    func close() {
        stream.close()
        flush()
        connection.shutdownWrite()
        _ = waitForEnd(timeoutSeconds: 5)
    }

    private func flush() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while stream.ciphertextBytesPending > 0 {
            let count = buffer.withUnsafeMutableBytes { stream.takeCiphertext(into: $0) }
            sendRaw(Array(buffer[0..<count]))
        }
    }

    /// Ciphertext in, fed to the stream: true if some came, false at EOF or an error, nil if none in time.
    private func receive(timeoutSeconds: Double) -> Bool? {
        guard connection.poll(events: Int16(POLLIN), timeoutSeconds: timeoutSeconds) else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress, $0.count, 0) }
        if count > 0 {
            buffer.withUnsafeBytes { stream.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            return true
        }
        if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return nil }
        return false
    }
}
