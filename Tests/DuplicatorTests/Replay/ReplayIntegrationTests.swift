import Foundation
import Glibc
import Platform
import Testing
@testable import Duplicator
@testable import Replay

/// Record and replay over real loopback sockets: sessions recorded through
/// the proxy in front of redis (redis-benchmark) replay against a fresh
/// redis with every session `match`; a tcpdump capture of redis-cli
/// sessions (no proxy) does too, and reassembles to the same streams when
/// rewritten with reordering and duplicates; bad inputs get one line or a
/// counted verdict. Each server on a free port, in a temporary folder,
/// stopped at the end.
@Suite("ReplayIntegrationTests", .serialized, .timeLimit(.minutes(6)))
struct ReplayIntegrationTests {
    static func replay(_ paths: [String], target port: UInt16, backend: Replayer.Backend,
                       speed: ReplayOptions.Speed = .max) throws -> ReplayReport {
        var options = ReplayOptions(target: SocketAddress(numericHost: "127.0.0.1", port: port)!)
        options.compare = true
        options.speed = speed
        options.turnTimeoutMs = 2000
        var run = Replayer.Run(paths: paths, options: options)
        run.backend = backend
        run.progressEnabled = false
        return try Replayer.run(run)
    }

    static func files(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".pcapng") }.sorted()
            .map { directory + "/" + $0 }
    }

    @Test("sessions recorded through the proxy (redis-benchmark) replay against a fresh redis: every session match",
          .enabled(if: Peers.runnable("redis-server", "redis-benchmark"), "needs redis-server and redis-tools"),
          arguments: Config.Backend.tested)
    func recordThenReplay(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for folder in ["main", "fresh", "records"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + folder, withIntermediateDirectories: true)
        }
        let peers = RealPeerTests()
        let main = try peers.redis(directory + "/main")
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: []) {
            $0.recording = RecordingConfig(directory: directory + "/records")
        }
        let benchmark = try runProgram(try Peers.require("redis-benchmark"),
                                       ["-h", "127.0.0.1", "-p", "\(proxy.port)", "-c", "4", "-n", "400",
                                        "-t", "ping,set,get", "-q"], timeoutSeconds: 60)
        proxy.stop()
        proxy.wait()
        #expect(benchmark.status == 0, "redis-benchmark: \(benchmark.standardError)")
        let files = Self.files(directory + "/records")
        let writer = try #require(proxy.recordWriter)
        #expect(files.count >= 4 && UInt64(files.count) == writer.count(.written), "\(files.count) files")
        #expect(writer.count(.failed) + writer.count(.droppedQueue) + writer.count(.skippedLimit) == 0)
        for file in files {
            var status = stat()
            #expect(stat(file, &status) == 0 && status.st_mode & 0o777 == 0o600, "\(file)")
        }
        let fresh = try peers.redis(directory + "/fresh")
        for replayBackend in [Replayer.Backend.ioUring, .epoll] {
            _ = try runProgram(try Peers.require("redis-cli"), ["-p", "\(fresh.port)", "FLUSHALL"])
            let report = try Self.replay([directory + "/records"], target: fresh.port, backend: replayBackend)
            #expect(report.counts.sessions == files.count)
            #expect(report.counts.count(.match) == files.count,
                    "\(replayBackend): \(report.summary)")
            #expect(report.counts.requests >= 1600 && report.latencySamples > 0)
        }
    }

    @Test("a tcpdump capture of redis-cli sessions (no proxy) replays with match for each, on both backends; rewritten with reordering and duplicates it gives the same streams",
          .enabled(if: Peers.runnable("redis-server", "redis-cli", "tcpdump"), "needs redis-server, redis-tools and tcpdump"))
    func tcpdumpCapture() throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for folder in ["recorded", "fresh"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + folder, withIntermediateDirectories: true)
        }
        let peers = RealPeerTests()
        let recorded = try peers.redis(directory + "/recorded")
        let capture = directory + "/capture.pcap"
        let tcpdump = Process()
        tcpdump.executableURL = URL(fileURLWithPath: try Peers.require("tcpdump"))
        tcpdump.arguments = ["-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w", capture, "tcp port \(recorded.port)"]
        let tcpdumpErrors = Pipe()
        tcpdump.standardError = tcpdumpErrors
        tcpdump.standardOutput = FileHandle.nullDevice
        try tcpdump.run()
        // SIGKILL: the test process blocks SIGTERM (the proxy's signal
        // handling), and its children inherit the mask; -U wrote each packet already.
        func stopCapture() {
            if tcpdump.isRunning { kill(tcpdump.processIdentifier, SIGKILL) }
            tcpdump.waitUntilExit()
        }
        defer { stopCapture() }
        // tcpdump writes the file's header once it listens.
        #expect(eventually(timeoutSeconds: 10) { (try? FileManager.default.attributesOfItem(atPath: capture)[.size] as? Int) ?? 0 >= 24 })
        usleep(300_000)
        let cli = try Peers.require("redis-cli")
        let commands: [[String]] = [["SET", "a", "1"], ["GET", "a"], ["INCR", "counter"], ["INCR", "counter"],
                                    ["RPUSH", "list", "x", "y"], ["LRANGE", "list", "0", "-1"], ["PING"], ["GET", "missing"]]
        for command in commands {
            let result = try runProgram(cli, ["-h", "127.0.0.1", "-p", "\(recorded.port)"] + command)
            #expect(result.status == 0)
        }
        // Every packet of the last session (its FINs) in the file before tcpdump goes.
        let lastSeen = eventually(timeoutSeconds: 5) {
            (try? CaptureFixture.assemble([UInt8](Data(contentsOf: URL(fileURLWithPath: capture)))).sessions.count) == commands.count
        }
        #expect(lastSeen, "tcpdump did not write every session")
        usleep(200_000)
        stopCapture()

        let fresh = try peers.redis(directory + "/fresh")
        for backend in [Replayer.Backend.ioUring, .epoll] {
            _ = try runProgram(cli, ["-p", "\(fresh.port)", "FLUSHALL"])
            // At the recorded pace: each session's commands depend on the ones before.
            let report = try Self.replay([capture], target: fresh.port, backend: backend, speed: .scaled(1))
            #expect(report.counts.sessions == commands.count, "\(report.summary)")
            #expect(report.counts.count(.match) == commands.count, "\(backend): \(report.summary)")
        }
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: capture)))
        let original = try CaptureFixture.assemble(bytes)
        let rewritten = try CaptureFixture.assemble(CaptureFixture.rewriteReorderedWithDuplicates(bytes, seed: 7))
        #expect(original.sessions.count == commands.count && rewritten.sessions.count == commands.count)
        #expect(rewritten.counts.duplicateSegments > 0)
        #expect(original.sessions.map(\.clientBytes) == rewritten.sessions.map(\.clientBytes))
        #expect(original.sessions.map(\.serverBytes) == rewritten.sessions.map(\.serverBytes))
    }

    @Test("bad input: not a capture, no TCP, a truncated file, a refusing target: one line; a resetting target: counted")
    func badInput() throws {
        let binary = try builtBinary("duplicator")
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let text = directory + "/notes.txt"
        try "GET / HTTP/1.1\r\n\r\n".write(toFile: text, atomically: true, encoding: .utf8)
        let notCapture = try runProgram(binary, ["replay", text, "--target", "127.0.0.1:1"])
        #expect(notCapture.status != 0 && notCapture.errorLines.count == 1, "\(notCapture.standardError)")
        #expect(notCapture.standardError.contains("not a pcap or pcapng"))

        let udp: [UInt8] = [0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1] + [UInt8](repeating: 0, count: 8)
        let noTCP = directory + "/udp.pcap"
        try Data(CaptureFixture.pcap([(1, udp)])).write(to: URL(fileURLWithPath: noTCP))
        let noTCPRun = try runProgram(binary, ["replay", noTCP, "--target", "127.0.0.1:1"])
        #expect(noTCPRun.status != 0 && noTCPRun.errorLines.count == 1 && noTCPRun.standardError.contains("no TCP packets"),
                "\(noTCPRun.standardError)")

        // A server that answers each session: a good capture of one session against it.
        let echo = try startServer(.echo)
        defer { echo.stop() }
        let client = CaptureFixture.address("127.0.0.1", 40000)
        let server = CaptureFixture.address("127.0.0.1", echo.boundPort)
        let packets = CaptureFixture.packets([CaptureFixture.conversation(client: client, server: server,
                                                                         exchanges: [("hello\n", "hello\n"), ("again\n", "again\n")])])
        let good = CaptureFixture.pcap(packets)
        let truncated = directory + "/truncated.pcap"
        try Data(good + good.prefix(30).suffix(6)).write(to: URL(fileURLWithPath: truncated))
        let truncatedRun = try runProgram(binary, ["replay", truncated, "--target", "127.0.0.1:\(echo.boundPort)", "--compare", "--json"])
        #expect(truncatedRun.status == 0, "\(truncatedRun.standardError)")
        #expect(truncatedRun.standardError.contains("truncated"), "\(truncatedRun.standardError)")
        #expect(truncatedRun.standardOutput.contains("\"match\": 1"), "\(truncatedRun.standardOutput)")

        let refused = try runProgram(binary, ["replay", truncated, "--target", "127.0.0.1:\(RefusingPort().port)"])
        #expect(refused.status != 0 && refused.standardError.contains("every connect failed"), "\(refused.standardError)")
        #expect(refused.errorLines.filter { !$0.contains("truncated") }.count == 1, "\(refused.standardError)")

        let resetting = try FaultServer.start(.resetAfterReading(3))
        defer { resetting.stop() }
        var options = ReplayOptions(target: SocketAddress(numericHost: "127.0.0.1", port: resetting.port)!)
        options.compare = true
        options.speed = .max
        var run = Replayer.Run(paths: [truncated], options: options)
        run.progressEnabled = false
        let report = try Replayer.run(run)
        #expect(report.counts.resets + report.counts.count(.shorter) == 1 && report.counts.count(.match) == 0, "\(report.summary)")
    }

    @Test("recording's bounds: --record-sample leaves sessions out, --record-max-bytes stops recording; both counted",
          arguments: Config.Backend.tested)
    func recordingBounds(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: []) {
            var recording = RecordingConfig(directory: directory)
            recording.samplePercent = 50
            recording.bytesPerDirection = 1000
            recording.directoryBytesMax = 8 * 1024
            $0.recording = recording
        }
        for index in 0..<40 {
            let connection = try TestConnection(port: proxy.port)
            let payload = [UInt8](repeating: UInt8(ascii: "a") + UInt8(index % 26), count: 1500)
            _ = connection.exchange(payload)
        }
        proxy.stop()
        proxy.wait()
        let writer = try #require(proxy.recordWriter)
        let written = writer.count(.written)
        #expect(writer.count(.sampledOut) > 5 && writer.count(.sampledOut) < 35, "sampled out \(writer.count(.sampledOut))")
        #expect(writer.count(.skippedLimit) > 0 && written > 0)
        #expect(writer.count(.sampledOut) + writer.count(.skippedLimit) + written == 40)
        #expect(writer.truncated > 0)
        let files = Self.files(directory)
        #expect(UInt64(files.count) == written)
        let total = files.reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: $1)[.size] as? Int) ?? 0) }
        #expect(total <= 8 * 1024)
        let text = proxy.snapshot()
        #expect(text.recordings?[RecordWriter.Result.written.rawValue] == written)
    }
}
