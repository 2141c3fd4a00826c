import Foundation
import Glibc
import Platform
import Testing
import TestSupport
@testable import Duplicator

/// Issue 21's leftovers: what the start set up from the configuration
/// follows a reload (the run-time loop guard, the problem log), and a removed
/// mirror's live copies are counted apart as they finish. In process, over
/// real loopback sockets, on both backends.
@Suite("Reload: what the start set up follows a reload (in process)", .serialized, .timeLimit(.minutes(6)))
struct ReloadFollowsTests {
    static func config(main: UInt16, mirrors: [UInt16]) -> Config {
        var config = Config(listen: try! Endpoint(parsing: "127.0.0.1:0", role: .listen), main: endpoint(main),
                            mirrors: mirrors.map(endpoint))
        config.mirrorSlots = 4
        config.threads = 1
        config.maxMemoryBytes = 8 << 20
        config.mirrorLingerMs = 500
        return config
    }

    @Test("a removed mirror's live copy is counted in duplicator_mirror_retired_sessions_total when its session ends; later sessions add nothing",
          arguments: Config.Backend.tested)
    func retiredCopies(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        let mirror = try startServer(.echo)
        defer { [main, mirror].forEach { $0.stop() } }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0 = Self.config(main: main.boundPort, mirrors: [mirror.boundPort])
            $0.backend = backend
        }
        defer { proxy.shutdown() }
        let name = "127.0.0.1:\(mirror.boundPort)"
        let live = try TestConnection(port: proxy.port, timeoutSeconds: 5)
        #expect(live.exchange(Array("before\n".utf8), shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: 7).received
                == Array("before\n".utf8))
        #expect(eventually(timeoutSeconds: 5) { mirror.connectionRecords().count == 1 }, "the mirror got the live session")

        var removed = Self.config(main: main.boundPort, mirrors: [])
        removed.backend = backend
        _ = try proxy.reload(to: removed)
        #expect(proxy.snapshot().everyMirror.first { $0.name == name }?.sessionsRetired == 0, "still live: not counted yet")
        let after = try TestConnection(port: proxy.port, timeoutSeconds: 5)
        #expect(after.exchange(Array("after\n".utf8), timeoutSeconds: 5).received == Array("after\n".utf8))
        live.shutdownWrite()
        #expect(eventually(timeoutSeconds: 5) { proxy.snapshot().everyMirror.first { $0.name == name }?.sessionsRetired == 1 },
                "\(proxy.snapshot().everyMirror)")
        let page = PrometheusText.render(proxy.snapshot())
        #expect(page.contains("\nduplicator_mirror_retired_sessions_total{mirror=\"\(name)\"} 1\n"), "\(page)")
        #expect(!page.contains("duplicator_mirror_sessions_total{mirror=\"\(name)\"}"), "the other families show the current mirrors only")
        #expect(mirror.connectionRecords().count == 1, "the session after the reload was not mirrored")
    }

    @Test("the run-time loop guard learns the addresses of a reload's mirrors")
    func loopGuardLearns() throws {
        let main = try startServer(.echo)
        let mirror = try startServer(.echo)
        defer { [main, mirror].forEach { $0.stop() } }
        let proxy = try startProxy(main: main.boundPort, mirrors: []) { $0 = Self.config(main: main.boundPort, mirrors: []) }
        defer { proxy.shutdown() }
        let client = try #require(SocketAddress(numericHost: "127.0.0.1", port: 40000))
        let target = try endpoint(mirror.boundPort).resolve(role: .connect)
        #expect(proxy.loopGuard.suspect(source: client, destination: target) == nil, "not a target before the reload")
        _ = try proxy.reload(to: Self.config(main: main.boundPort, mirrors: [mirror.boundPort]))
        #expect(proxy.loopGuard.suspect(source: client, destination: target) != nil,
                "a connection from this host to the new mirror's address is a suspect, as one to a mirror of the start")
    }

    @Test("a reload switches --compare off and on again for new sessions where the start had it; refused where it did not",
          arguments: Config.Backend.tested)
    func compareSwitched(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        let mirror = try startServer(.echo)
        defer { [main, mirror].forEach { $0.stop() } }
        var config = Self.config(main: main.boundPort, mirrors: [mirror.boundPort])
        config.backend = backend
        config.compare = true
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) { $0 = config }
        defer { proxy.shutdown() }
        func matches() -> UInt64 { proxy.snapshot().mirrors.first?.compared(.match) ?? 0 }
        func session(_ text: String) throws {
            let connection = try TestConnection(port: proxy.port, timeoutSeconds: 5)
            #expect(connection.exchange(Array(text.utf8), timeoutSeconds: 5).received == Array(text.utf8))
        }
        try session("compared\n")
        #expect(eventually(timeoutSeconds: 5) { matches() == 1 }, "\(matches())")
        config.compare = false
        _ = try proxy.reload(to: config)
        try session("not compared\n")
        #expect(eventually(timeoutSeconds: 5) { proxy.snapshot().sessionsActive == 0 && proxy.snapshot().sessionsAccepted >= 2 },
                "the session after the reload is over (its verdict, if any, counted)")
        #expect(matches() == 1, "a session after --compare went off gets no verdict")
        config.compare = true
        _ = try proxy.reload(to: config)
        try session("compared again\n")
        #expect(eventually(timeoutSeconds: 5) { matches() == 2 }, "\(matches())")

        let plain = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0 = Self.config(main: main.boundPort, mirrors: [mirror.boundPort])
            $0.backend = backend
        }
        defer { plain.shutdown() }
        var on = Self.config(main: main.boundPort, mirrors: [mirror.boundPort])
        on.backend = backend
        on.compare = true
        #expect(throws: ConfigError.self) { _ = try plain.reload(to: on) }
    }

    @Test("the dump writer takes a reload's --dump-max-files and --dump-queue")
    func dumpWriterFollows() throws {
        let main = try startServer(.echo)
        let mirror = try startServer(.echo)
        defer { [main, mirror].forEach { $0.stop() } }
        let directory = NSTemporaryDirectory() + "duplicator-follow-\(getpid())"
        mkdir(directory, 0o700)
        defer { rmdir(directory) }
        var config = Self.config(main: main.boundPort, mirrors: [mirror.boundPort])
        config.compare = true
        config.dumpDirectory = directory
        let proxy = try startProxy(main: main.boundPort, mirrors: [mirror.boundPort]) { $0 = config }
        defer { proxy.shutdown() }
        config.dumpMaxFiles = 3
        config.dumpQueueBytes = 2 << 20
        _ = try proxy.reload(to: config)
        #expect(proxy.dumpWriter?.maxFiles == 3)
        #expect(proxy.dumpWriter?.queueBytesMax == 2 << 20)
    }

    @Test("with --dump-dir, a reload's new mirror is dumped under its own name and address", arguments: Config.Backend.tested)
    func dumpsFollowTheMirrors(backend: Config.Backend) throws {
        let tshark = try Peers.require("tshark")
        let main = try startServer(.echo)
        defer { main.stop() }
        let identical = try VariantEchoServer(.identical)
        let flipping = try VariantEchoServer(.flipByte(at: 3))
        defer { identical.stop(); flipping.stop() }
        var template = Array("/tmp/dump-follow-XXXXXX".utf8CString)
        let directory = String(cString: try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }))
        defer {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] { unlink(directory + "/" + name) }
            rmdir(directory)
        }
        var config = Self.config(main: main.boundPort, mirrors: [identical.port])
        config.backend = backend
        config.compare = true
        config.dumpDirectory = directory
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [identical.port]) { $0 = config }
        var stopped = false
        defer { if !stopped { proxy.shutdown() } }
        func session(_ text: String) throws {
            let connection = try TestConnection(port: proxy.port, timeoutSeconds: 5)
            #expect(connection.exchange(Array(text.utf8), timeoutSeconds: 5).received == Array(text.utf8))
        }
        try session("matches the first mirror\n")
        // The diverging mirror replaces the identical one: it takes a slot of its own.
        config.mirrors = [endpoint(flipping.port)]
        _ = try proxy.reload(to: config)
        try session("diverges on the second mirror\n")
        #expect(eventually(timeoutSeconds: 5) { proxy.activeSessions == 0 })
        proxy.shutdown()  // the writer writes what it was handed, then ends
        stopped = true

        let name = "127.0.0.1:\(flipping.port)"
        let page = PrometheusText.render(proxy.snapshot())
        #expect(page.contains("duplicator_mirror_dumps_total{mirror=\"\(name)\",result=\"written\"} 1\n"), "\(page)")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".pcapng") }
        #expect(files.count == 1 && files[0].contains("-127.0.0.1_\(flipping.port)-diverged"), "\(files)")
        guard let file = files.first else { return }
        let streams = try DumpIntegrationTests.payloads(tshark, directory + "/" + file)
        #expect(streams.keys.contains { $0.hasSuffix(">\(flipping.port)") }, "the mirror's conversation is with its address: \(streams.keys)")
        #expect(!streams.keys.contains { $0.contains("\(identical.port)") })
    }

    @Test("a reload moves --dump-dir, changes --dump-bytes, and switches dumps off and on for new sessions; refused where the start had no --dump-dir",
          arguments: Config.Backend.tested)
    func dumpSettingsFollow(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let flipping = try VariantEchoServer(.flipByte(at: 3))
        defer { flipping.stop() }
        let directories = try (0..<2).map { _ in
            var template = Array("/tmp/dump-settings-XXXXXX".utf8CString)
            return String(cString: try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }))
        }
        defer {
            for directory in directories {
                for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] { unlink(directory + "/" + name) }
                rmdir(directory)
            }
        }
        func dumps(_ directory: String) -> Int {
            ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".pcapng") }.count
        }
        var config = Self.config(main: main.boundPort, mirrors: [flipping.port])
        config.backend = backend
        config.compare = true
        config.dumpDirectory = directories[0]
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [flipping.port]) { $0 = config }
        defer { proxy.shutdown() }
        let payload = Array("forty bytes of a session that diverges.\n".utf8)
        func session() throws {
            let connection = try TestConnection(port: proxy.port, timeoutSeconds: 5)
            #expect(connection.exchange(payload, timeoutSeconds: 5).received == payload)
            #expect(eventually(timeoutSeconds: 5) { proxy.activeSessions == 0 })
        }
        func reload(_ change: (inout Config) -> Void) throws {
            change(&config)
            _ = try proxy.reload(to: config)
        }
        try session()
        #expect(eventually(timeoutSeconds: 5) { dumps(directories[0]) == 1 })

        try reload { $0.dumpDirectory = directories[1]; $0.dumpBytes = 8 }
        try session()
        #expect(eventually(timeoutSeconds: 5) { dumps(directories[1]) == 1 }, "the new directory")
        // 8 bytes kept of each direction's 40: client, main, mirror.
        #expect(eventually(timeoutSeconds: 5) { proxy.snapshot().mirrors[0].dumpTruncatedBytes == UInt64(3 * (payload.count - 8)) },
                "\(proxy.snapshot().mirrors[0].dumpTruncatedBytes)")

        try reload { $0.dumpDirectory = nil }
        try session()
        #expect(eventually(timeoutSeconds: 5) { proxy.snapshot().mirrors[0].compared(.diverged) == 3 }, "compared, not dumped")

        try reload { $0.dumpDirectory = directories[0] }
        try session()
        #expect(eventually(timeoutSeconds: 5) { dumps(directories[0]) == 2 })
        #expect(dumps(directories[0]) + dumps(directories[1]) == 3, "none for the session while dumps were off")

        // A directory that is not there: one line naming the key, nothing changes.
        var missing = config
        missing.dumpDirectory = directories[0] + "/absent"
        #expect { _ = try proxy.reload(to: missing) } throws: { ($0 as? ConfigError)?.message.hasPrefix("key 'dump-dir': --dump-dir ") == true }
        #expect(proxy.dumpWriter?.directory == directories[0])

        // A process started with --compare but no --dump-dir has no writer.
        var plain = Self.config(main: main.boundPort, mirrors: [flipping.port])
        plain.backend = backend
        plain.compare = true
        let undumped = try startProxy(backend: backend, main: main.boundPort, mirrors: [flipping.port]) { $0 = plain }
        defer { undumped.shutdown() }
        plain.dumpDirectory = directories[1]
        #expect { _ = try undumped.reload(to: plain) } throws: {
            ($0 as? ConfigError)?.message.contains("started without --dump-dir") == true
        }
    }

    @Test("the log's line about main's connect timeouts names the --main-connect-timeout of the latest reload")
    func problemLogFollows() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        var config = Self.config(main: main.boundPort, mirrors: [])
        config.mainConnectTimeoutMs = 2_000
        let proxy = try startProxy(main: main.boundPort, mirrors: []) { $0 = config }
        defer { proxy.shutdown() }
        config.mainConnectTimeoutMs = 300
        _ = try proxy.reload(to: config)
        proxy.control.problems.mainConnectTimedOut()
        let lines = proxy.control.problems.lines(nowMs: 1 << 40)
        #expect(lines.contains { $0.contains("(no answer within --main-connect-timeout 300ms)") }, "\(lines)")
    }
}
