import Foundation
import Glibc
import LoadTools
import Testing
import Synchronization
import TestSupport
@testable import Duplicator

/// The `duplicator` binary started with `--config FILE`, its stderr in a
/// file (a reload loop logs more than a pipe holds), reloaded with SIGHUP.
final class ReloadingProxy: @unchecked Sendable {
    let process: Process
    let port: UInt16
    let configPath: String
    let logPath: String
    private var reloadLines = 0

    init(backend: Config.Backend, config: String, arguments: [String] = []) throws {
        port = freePort()
        let directory = NSTemporaryDirectory() + "duplicator-reload-\(getpid())-\(port)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        configPath = directory + "/duplicator.yaml"
        logPath = directory + "/stderr.log"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: try builtBinary("duplicator"))
        process.arguments = ["-l", "127.0.0.1:\(port)", "--config", configPath, "--backend", backend.rawValue] + arguments
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        guard eventually(timeoutSeconds: 10, { (try? TestConnection(port: port, timeoutSeconds: 1)) != nil }) else {
            process.terminate()
            throw TestFailure("duplicator did not start listening on \(port): \(log)")
        }
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: (configPath as NSString).deletingLastPathComponent)
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The lines a SIGHUP logged (applied or refused).
    var reloadLog: [Substring] { log.split(separator: "\n").filter { $0.contains("SIGHUP: ") } }

    /// Writes `config` and sends SIGHUP; returns the line it logged (nil if none in time).
    func reload(_ config: String) throws -> String? {
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        kill(process.processIdentifier, SIGHUP)
        reloadLines += 1
        var line: String?
        _ = eventually(timeoutSeconds: 10) {
            let lines = reloadLog
            guard lines.count >= reloadLines else { return false }
            line = String(lines[reloadLines - 1])
            return true
        }
        return line
    }

    func stop() -> Int32? {
        kill(process.processIdentifier, SIGTERM)
        guard eventually(timeoutSeconds: 15, { !process.isRunning }) else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// Promise 10: a reload applies to new sessions only, and a bad file changes nothing.
@Suite("Reload: SIGHUP with --config (the binary)", .serialized, .timeLimit(.minutes(6)))
struct ReloadIntegrationTests {
    static func payload(phase: Int, _ index: Int) -> [UInt8] {
        TestBytes.random(2_000 + 97 * index, seed: UInt64(phase * 1000 + index))
    }

    static func mirrorsYAML(main: UInt16, _ mirrors: [String]) -> String {
        "forward: 127.0.0.1:\(main)\nmirror-linger: 300ms\nmirror: [\(mirrors.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
    }

    @Test("SIGHUP adds, removes and resamples mirrors: each mirror gets exactly the sessions that began while it was configured",
          arguments: Config.Backend.tested)
    func addRemoveResample(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        let first = try startServer(.echo)
        let second = try startServer(.echo)
        defer { [main, first, second].forEach { $0.stop() } }
        let a = "127.0.0.1:\(first.boundPort)", b = "127.0.0.1:\(second.boundPort)"
        let proxy = try ReloadingProxy(backend: backend, config: Self.mirrorsYAML(main: main.boundPort, [a]))
        let sessions = 12
        func phase(_ number: Int, count: Int = sessions) throws -> [[UInt8]] {
            let failures = try echoSessions(count, port: proxy.port) { Self.payload(phase: number, $0) }
            #expect(failures.isEmpty, "phase \(number): \(failures)")
            return (0..<count).map { Self.payload(phase: number, $0) }
        }
        let one = try phase(1)
        let added = try #require(try proxy.reload(Self.mirrorsYAML(main: main.boundPort, [a, b])), "no reload line: \(proxy.log)")
        #expect(added.contains("reloaded") && added.contains("changed mirror"), "\(added)")
        let two = try phase(2)
        let removed = try #require(try proxy.reload(Self.mirrorsYAML(main: main.boundPort, [b])))
        #expect(removed.contains("reloaded"), "\(removed)")
        let three = try phase(3)
        // The first mirror also got the start's readiness probe: a session with no bytes.
        #expect(receivedStreams(first, count: 2 * sessions + 1) == streamSignatures([[]] + one + two), "the first mirror: phases 1 and 2")
        #expect(receivedStreams(second, count: 2 * sessions) == streamSignatures(two + three), "the second: phases 2 and 3")

        // Resample: the first mirror back (its old slot) on 1% of sessions, the second on all.
        let resampled = try #require(try proxy.reload(Self.mirrorsYAML(main: main.boundPort, ["\(a)@1%", b])))
        #expect(resampled.contains("reloaded") && resampled.contains("mirror sampling"), "\(resampled)")
        let four = try phase(4, count: 40)
        #expect(receivedStreams(second, count: 2 * sessions + 40) == streamSignatures(two + three + four))
        usleep(300_000)
        let later = first.connectionRecords().dropFirst(2 * sessions + 1)
        #expect(later.count <= 6, "a 1% mirror got \(later.count) of 40 sessions")
        let allowed = Set(four.map(StreamSignature.init))
        #expect(later.allSatisfy { allowed.contains(StreamSignature($0)) })
        #expect(proxy.stop() == 0)
        #expect(!proxy.log.contains("error"), "\(proxy.log)")
    }

    @Test("a session live across a reload keeps its mirrors: the removed one gets its whole stream, the added one none of it",
          arguments: Config.Backend.tested)
    func liveSessionKeepsItsMirrors(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        let first = try startServer(.echo)
        let second = try startServer(.echo)
        defer { [main, first, second].forEach { $0.stop() } }
        let a = "127.0.0.1:\(first.boundPort)", b = "127.0.0.1:\(second.boundPort)"
        let proxy = try ReloadingProxy(backend: backend, config: Self.mirrorsYAML(main: main.boundPort, [a]))
        let before = Self.payload(phase: 5, 1), after = Self.payload(phase: 5, 2)
        let live = try TestConnection(port: proxy.port)
        let (echoed, _) = live.exchange(before, shutdownAfterSending: false, timeoutSeconds: 10, expectBytes: before.count)
        #expect(echoed == before)
        let line = try #require(try proxy.reload(Self.mirrorsYAML(main: main.boundPort, [b])))
        #expect(line.contains("reloaded"), "\(line)")
        let fresh = Self.payload(phase: 5, 3)
        #expect(try echoSessions(1, port: proxy.port) { _ in fresh }.isEmpty, "a session after the reload")
        let (rest, end) = live.exchange(after, timeoutSeconds: 10)
        #expect(rest == after && end == .eof)
        #expect(receivedStreams(first, count: 2) == streamSignatures([[], before + after]),
                "the removed mirror: the probe and the live session, whole")
        #expect(receivedStreams(second, count: 1) == streamSignatures([fresh]), "the added mirror: only the new session")
        #expect(proxy.stop() == 0)
    }

    @Test("every bad file is refused with one line naming the key and the reason; the old configuration keeps serving",
          arguments: Config.Backend.tested)
    func badFiles(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        let mirror = try startServer(.echo)
        defer { [main, mirror].forEach { $0.stop() } }
        let metricsPort = freePort()
        let good = Self.mirrorsYAML(main: main.boundPort, ["127.0.0.1:\(mirror.boundPort)"])
            + "metrics: 127.0.0.1:\(metricsPort)\n"
        let proxy = try ReloadingProxy(backend: backend, config: good)
        let bad: [(file: String, expected: String)] = [
            (good + "listen: [\n", "not YAML"),
            (good + "bogus: 1\n", "key 'bogus': unknown key"),
            (good.replacingOccurrences(of: "mirror-linger: 300ms", with: "mirror-linger: 3 parsecs"), "key 'mirror-linger': value '3 parsecs'"),
            // A value finer than its setting's unit, and one the start would refuse: as at start.
            (good + "mirror-turn-timeout: 1500ns\n", "key 'mirror-turn-timeout': value '1500ns': not a whole number of this option's smallest unit, 1us"),
            (good + "stats-interval: 10ms\n", "key 'stats-interval': --stats-interval 10ms: too often; the smallest is 1s"),
            (good.replacingOccurrences(of: "127.0.0.1:\(mirror.boundPort)", with: "nowhere.invalid:80"), "key 'mirror'"),
            (good.replacingOccurrences(of: "127.0.0.1:\(mirror.boundPort)", with: "127.0.0.1:\(proxy.port)"), "key 'mirror': -m 127.0.0.1:\(proxy.port) is this proxy's own listen address"),
            (good.replacingOccurrences(of: "127.0.0.1:\(mirror.boundPort)", with: "127.0.0.1:\(main.boundPort)"), "key 'mirror'"),
            (good + "threads: 7\n", "cannot change threads in place: that needs a new process"),
            (good.replacingOccurrences(of: "metrics: 127.0.0.1:\(metricsPort)", with: "metrics: 127.0.0.1:\(freePort())"), "key 'metrics'"),
        ]
        var sent: [[UInt8]] = []
        for (index, (file, expected)) in bad.enumerated() {
            let line = try #require(try proxy.reload(file), "no line for \(expected): \(proxy.log)")
            #expect(line.contains(expected), "\(line)")
            #expect(line.hasSuffix("the running configuration is kept"), "\(line)")
            let payload = Self.payload(phase: 9, index)
            #expect(try echoSessions(1, port: proxy.port) { _ in payload }.isEmpty)
            sent.append(payload)
        }
        #expect(receivedStreams(mirror, count: sent.count + 1) == streamSignatures([[]] + sent),
                "the old mirror got every session (and the start's readiness probe, empty)")
        let curl = try runProgram(try Peers.require("curl"), ["-sS", "-m", "2", "http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(curl.standardOutput.contains("duplicator_config_reloads_total{result=\"failed\"} \(bad.count)"), "\(curl.standardOutput)")
        #expect(curl.standardOutput.contains("duplicator_config_reloads_total{result=\"ok\"} 0"))
        #expect(curl.standardOutput.contains("duplicator_config_info{generation=\"1\","))
        #expect(curl.standardOutput.contains("duplicator_config_last_reload_success_timestamp_seconds "))
        let applied = try #require(try proxy.reload(good.replacingOccurrences(of: "300ms", with: "200ms")))
        #expect(applied.contains("reloaded"), "\(applied)")
        let after = try runProgram(try Peers.require("curl"), ["-sS", "-m", "2", "http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(after.standardOutput.contains("duplicator_config_reloads_total{result=\"ok\"} 1"))
        #expect(after.standardOutput.contains("duplicator_config_info{generation=\"2\","))
        #expect(proxy.stop() == 0)
    }
}

@Suite("Config file: its keys follow the run command's options")
struct ConfigKeysTests {
    @Test("every option of duplicator --help but --check, --config and --handover-socket is a key of the file, with its short name")
    func everyOptionIsAKey() throws {
        let dump = try runProgram(try builtBinary("duplicator"), ["--experimental-dump-help"])
        #expect(dump.status == 0)
        struct Name: Decodable { let kind: String; let name: String }
        struct Argument: Decodable { let names: [Name]?; let shouldDisplay: Bool }
        struct Command: Decodable { let arguments: [Argument] }
        struct Dump: Decodable { let command: Command }
        let command = try JSONDecoder().decode(Dump.self, from: Data(dump.standardOutput.utf8)).command
        var options: Set<String> = []
        for argument in command.arguments where argument.shouldDisplay {
            guard let long = argument.names?.first(where: { $0.kind == "long" })?.name,
                  !["help", "version", "check", "config", "handover-socket"].contains(long) else { continue }
            options.insert(long)
            let short = argument.names?.first(where: { $0.kind == "short" })?.name
            #expect(ConfigFile.keys.first { $0.name == long }?.short.map(String.init) == short, "--\(long)")
        }
        #expect(options == Set(ConfigFile.keys.map(\.name)))
    }

    @Test("--check --config: the file's options, the command line's winning, and every mistake one line")
    func check() throws {
        let binary = try builtBinary("duplicator")
        let main = try startServer(.echo)
        defer { main.stop() }
        let path = NSTemporaryDirectory() + "duplicator-check-\(getpid()).yaml"
        defer { unlink(path) }
        try "forward: 127.0.0.1:\(main.boundPort)\nmirror: [\"127.0.0.1:\(main.boundPort + 1)@10%\"]\nthreads: 1\nmax-memory: 8MiB\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let base = ["--check", "--config", path, "-l", "127.0.0.1:0"]
        let ok = try runProgram(binary, base)
        #expect(ok.status == 0, "\(ok.standardError)")
        #expect(ok.lines.contains("mirrors: 1: 127.0.0.1:\(main.boundPort + 1) on 10% of sessions"), "\(ok.standardOutput)")
        #expect(ok.lines.contains("workers: 1"), "\(ok.standardOutput)")
        #expect(ok.standardOutput.contains("configuration file: \(path) (digest "), "\(ok.standardOutput)")
        let flagsWin = try runProgram(binary, base + ["--threads", "2", "-m", "127.0.0.1:\(main.boundPort + 2)"])
        #expect(flagsWin.lines.contains("mirrors: 1: 127.0.0.1:\(main.boundPort + 2)") && flagsWin.lines.contains("workers: 2"),
                "\(flagsWin.standardOutput)")
        let badFlag = try runProgram(binary, base + ["-t", "1x"])
        #expect(badFlag.status != 0 && badFlag.errorLines == ["duplicator: -t '1x': expected a number with a unit, like 500ms, 2s or 1m30s"],
                "a flag's mistake is the flag's: \(badFlag.standardError)")
        try "forward: :1\ntimeout: soon\n".write(toFile: path, atomically: true, encoding: .utf8)
        let badKey = try runProgram(binary, base)
        #expect(badKey.status != 0 && badKey.errorLines == ["duplicator: config file \(path): key 'timeout': value 'soon': expected a number with a unit, like 500ms, 2s or 1m30s"],
                "\(badKey.standardError)")
        let missing = try runProgram(binary, ["--check", "--config", "/nonexistent.yaml", "-l", ":1"])
        #expect(missing.status != 0 && missing.errorLines == ["duplicator: config file /nonexistent.yaml: No such file or directory (ENOENT)"],
                "\(missing.standardError)")
    }
}

/// Promise 10 with the peers a user has: wrk against nginx through the proxy
/// the whole time, while 20 reloads add, remove and resample two nginx mirrors.
@Suite("Reload: real peers", .serialized, .timeLimit(.minutes(6)))
struct ReloadRealPeerTests {
    @Test("20 reloads under wrk (one request per connection, and long-lived connections): zero client errors",
          .enabled(if: Peers.runnable("nginx", "wrk") || ProcessInfo.processInfo.environment["CI"] == "true", "needs nginx and wrk"))
    func reloadsUnderLoad() throws {
        let peers = RealPeerTests()
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["main", "a", "b"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + name, withIntermediateDirectories: true)
        }
        let main = try peers.nginx(directory + "/main")
        let a = try peers.nginx(directory + "/a")
        let b = try peers.nginx(directory + "/b")
        func logged(_ server: RealPeerTests.ServerProcess) -> Int {
            ((try? String(contentsOfFile: server.directory + "/access.log", encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        let sets: [[String]] = [["A"], ["A", "B"], ["B"], ["A@10%", "B"], [], ["A", "B@50%"], ["B@1%"], ["A", "B"]]
        func yaml(_ set: [String]) -> String {
            let mirrors = set.map { $0.replacingOccurrences(of: "A", with: "127.0.0.1:\(a.port)")
                .replacingOccurrences(of: "B", with: "127.0.0.1:\(b.port)") }
            return "forward: 127.0.0.1:\(main.port)\nmirror-linger: 200ms\nmirror: [\(mirrors.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
        }
        let files = sets.map(yaml)
        let proxy = try ReloadingProxy(backend: .auto, config: files[0], arguments: ["--threads", "2"])
        let wrk = try Peers.require("wrk")
        let results = Mutex<[ProcessResult]>([])
        let url = "http://127.0.0.1:\(proxy.port)/"
        try concurrently(3) { index in
            switch index {
            case 0: // one request per connection
                let result = try? runProgram(wrk, ["-t1", "-c4", "-d10s", "-H", "Connection: close", url], timeoutSeconds: 40)
                results.withLock { $0.append(result ?? ProcessResult(status: -1, standardError: "wrk did not run", standardOutput: "")) }
            case 1: // long-lived connections
                let result = try? runProgram(wrk, ["-t1", "-c4", "-d10s", url], timeoutSeconds: 40)
                results.withLock { $0.append(result ?? ProcessResult(status: -1, standardError: "wrk did not run", standardOutput: "")) }
            default:
                usleep(500_000)
                for reload in 1...20 {
                    let line = (try? proxy.reload(files[reload % files.count])) ?? nil
                    if line?.contains("reloaded") != true { results.withLock { $0.append(ProcessResult(status: -2, standardError: "reload \(reload): \(line ?? "no line")", standardOutput: "")) } }
                    usleep(400_000)
                }
            }
        }
        let all = results.withLock { $0 }
        #expect(all.count == 2, "\(all.filter { $0.status < 0 }.map(\.standardError))")
        for result in all {
            #expect(result.status == 0, "wrk: \(result.standardError)")
            #expect(!result.standardOutput.contains("Socket errors"), "\(result.standardOutput)")
            #expect(!result.standardOutput.contains("Non-2xx"), "\(result.standardOutput)")
            #expect(result.standardOutput.contains("requests in"), "\(result.standardOutput)")
        }
        #expect(proxy.reloadLog.filter { $0.contains("reloaded") }.count == 20, "\(proxy.reloadLog)")
        #expect(logged(a) > 0 && logged(b) > 0, "both mirrors served some sessions")
        #expect(proxy.stop() == 0)
    }
}
