import Foundation
import Glibc
import Platform
import Testing
import TestSupport
@testable import Duplicator

/// Issue 27, what an operator sees in the first hour: the pure parts
/// (the problem log's lines and limits, readable units, the refused
/// values, the PROXY v2 TLV bound is in ProxyProtocolTests).
@Suite("First hour: the problem log, readable units, refused values")
struct FirstHourUnitTests {
    @Test("a count and its noun agree in number")
    func counted() {
        #expect(Counted.text(1, "connect failure") == "1 connect failure")
        #expect(Counted.text(0, "connect failure") == "0 connect failures")
        #expect(Counted.text(3 as UInt64, "session") == "3 sessions")
    }

    @Test("bytes in readable units: never 0 MiB for 1 MiB")
    func readableBytes() {
        #expect(ReadableBytes.text(1 << 20) == "1 MiB")
        #expect(ReadableBytes.text((1 << 20) - 1) == "1024 KiB")
        #expect(ReadableBytes.text(3 << 19) == "1.5 MiB")
        #expect(ReadableBytes.text(64 << 10) == "64 KiB")
        #expect(ReadableBytes.text(512 << 20) == "512 MiB")
        #expect(ReadableBytes.text(100) == "100 B")
        #expect(ReadableBytes.text(0) == "0 B")
    }

    @Test("main's failures, refused headers and dumps: one line per cause per interval, counting what came meanwhile")
    func problemLines() throws {
        let log = ProblemLog(intervalMs: 10_000)
        log.name(main: "127.0.0.1:9", mainConnectTimeoutMs: 2_000, dumpDirectory: "/var/dumps", dumpQueueBytes: 1 << 20)
        #expect(log.lines(nowMs: 1).isEmpty, "nothing happened")
        log.mainConnectFailed(errno: ECONNREFUSED)
        var lines = log.lines(nowMs: 2)
        #expect(lines == ["main 127.0.0.1:9: 1 connect failure (last: Connection refused (ECONNREFUSED)); its client was closed"])
        // Within the interval: counted, not logged; after it, the count since.
        log.mainConnectFailed(errno: ECONNREFUSED)
        log.mainConnectFailed(errno: EHOSTUNREACH)
        #expect(log.lines(nowMs: 5_000).isEmpty)
        lines = log.lines(nowMs: 10_002)
        #expect(lines.count == 1)
        #expect(lines.first?.hasPrefix("main 127.0.0.1:9: 2 connect failures (last: No route to host (EHOSTUNREACH))") == true,
                "\(lines)")
        // Another cause has its own limit.
        log.mainConnectTimedOut()
        var peer = [UInt8](repeating: 0, count: 4)
        peer[0] = 192; peer[1] = 0; peer[2] = 2; peer[3] = 7
        let address = peer.withUnsafeBytes { ProxyAddress(family: .ipv4, networkBytes: $0, port: 4242) }
        log.proxyHeaderRefused(.invalid(.tlvBeyondHeader), peer: address)
        log.writeFailed(.dumpWriteFailure, path: "/var/dumps/dump-1-1-m-longer.pcapng", errno: ENOSPC)
        log.dropped(.dumpDropped)
        lines = log.lines(nowMs: 10_003)
        #expect(lines == [
            "main 127.0.0.1:9: 1 connect timeout (no answer within --main-connect-timeout 2s); its client was closed",
            "refused 1 client without a valid PROXY protocol header (last from 192.0.2.7:4242: a v2 TLV runs past the header's length)",
            "--dump-dir /var/dumps: 1 dump not written (last: /var/dumps/dump-1-1-m-longer.pcapng: No space left on device (ENOSPC))",
            "--dump-dir /var/dumps: 1 dump dropped: the writer's queue (--dump-queue 1MiB) was full; the disk is slower than the sessions that differ",
        ])
    }

    static func config() throws -> Config {
        Config(listen: try Endpoint(parsing: ":8080", role: .listen), main: try Endpoint(parsing: ":8081", role: .connect),
               mirrors: [try Endpoint(parsing: ":8082", role: .connect)])
    }

    @Test("timeouts the workers cannot keep are refused with the smallest they can; -t 0 is refused", arguments: [
        ("mirrorConnectTimeoutMs", 0, "-t 0: a mirror connect timeout is needed"),
        ("mirrorConnectTimeoutMs", 50, "-t 50ms: shorter than the workers' tick; the smallest is 100ms"),
        ("mainConnectTimeoutMs", 1, "--main-connect-timeout 1ms: shorter than the workers' tick; the smallest is 100ms (or 0)"),
        ("idleTimeoutMs", 99, "--idle-timeout 99ms"),
        ("mirrorLingerMs", 10, "--mirror-linger 10ms"),
        ("drainTimeoutMs", 10, "--drain-timeout 10ms"),
        ("proxyHeaderTimeoutMs", 10, "--proxy-header-timeout 10ms"),
        ("dumpQueueBytes", 1000, "--dump-queue must be from 1MiB to 16GiB"),
    ])
    func refusedTimeouts(name: String, value: Int, expected: String) throws {
        var config = try Self.config()
        switch name {
        case "mirrorConnectTimeoutMs": config.mirrorConnectTimeoutMs = value
        case "mainConnectTimeoutMs": config.mainConnectTimeoutMs = value
        case "idleTimeoutMs": config.idleTimeoutMs = value
        case "mirrorLingerMs": config.mirrorLingerMs = value
        case "drainTimeoutMs": config.drainTimeoutMs = value
        case "proxyHeaderTimeoutMs": config.proxyHeaderTimeoutMs = value
        default: config.dumpQueueBytes = value
        }
        let error = #expect(throws: ConfigError.self) { try config.validate() }
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "accepted")")
        #expect(error?.message.contains("\n") == false)
    }

    @Test("0 keeps its meaning where it has one, and the tick itself is accepted")
    func acceptedTimeouts() throws {
        var config = try Self.config()
        config.mainConnectTimeoutMs = 0
        config.idleTimeoutMs = 0
        config.mirrorLingerMs = 0
        config.drainTimeoutMs = 0
        config.mirrorConnectTimeoutMs = Config.timeoutMsMin
        config.proxyHeaderTimeoutMs = Config.timeoutMsMin
        try config.validate()
        #expect(UInt64(Config.timeoutMsMin) == WorkerCore<FakeSessionIO>.tickMs, "the smallest timeout is one tick")
        #expect(throws: ConfigError.self) { try Config.checkStatsInterval(milliseconds: 1) }
        #expect(throws: ConfigError.self) { try Config.checkStatsInterval(milliseconds: 999) }
        try Config.checkStatsInterval(milliseconds: 0)
        try Config.checkStatsInterval(milliseconds: 1_000)
    }

    @Test("the metric families the man page lists are every family /metrics serves")
    func metricFamilies() throws {
        let families = PrometheusText.families()
        let names = Set(families.map(\.name))
        #expect(names.count == families.count, "no family twice")
        for name in ["duplicator_sessions_ended_total", "duplicator_mirror_connect_failures_total", "duplicator_backend",
                     "duplicator_mirror_dumps_total", "duplicator_mirror_compared_sessions_total"] {
            #expect(names.contains(name), "\(name)")
        }
        #expect(families.allSatisfy { !$0.help.isEmpty && ["counter", "gauge", "histogram"].contains($0.type) })
    }
}

/// The dump writer's queue is bounded in bytes: a burst of small dumps is
/// taken whole (16 requests was the bound, and a quarter of 60 were lost),
/// large ones are bounded, and a dropped one is logged.
@Suite("First hour: dumps")
struct FirstHourDumpTests {
    static func request(bytes: Int) -> DumpRequest {
        var stream = SessionRecording.Stream()
        stream.bytes = [UInt8](repeating: 0x41, count: bytes)
        stream.pieceEnds = [bytes]
        stream.pieceTimesUs = [1]
        return DumpRequest(mirror: 0, verdict: .longer, divergenceOffset: 0, clientAddresses: nil, startUs: 0, endUs: 1,
                           client: stream, main: stream, mirrorReplies: stream)
    }

    @Test("a burst of 200 small dumps is queued whole; big ones stop at the byte bound, counted and logged")
    func queueBoundInBytes() throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let problems = ProblemLog()
        let servers = [ProxyAddress](repeating: ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(start: nil, count: 0), port: 1),
                                     count: 2)
        let writer = try DumpWriter(directory: directory, maxFiles: 10_000, servers: servers, mirrorNames: ["m"],
                                    queueBytesMax: 1 << 20, problems: problems)
        // The thread is not started: nothing leaves the queue.
        for _ in 0..<200 { writer.submit(Self.request(bytes: 100)) }
        #expect(writer.count(mirror: 0, .droppedQueue) == 0)
        // 100 KiB per stream: about three fit beside the small ones in 1 MiB.
        for _ in 0..<10 { writer.submit(Self.request(bytes: 100 << 10)) }
        let dropped = writer.count(mirror: 0, .droppedQueue)
        #expect((6...8).contains(dropped), "\(dropped) dropped")
        #expect(problems.count(.dumpDropped) == dropped)
        #expect(problems.lines(nowMs: 1).contains { $0.contains("dumps dropped") })
        try writer.start()
        writer.stop()
        #expect(writer.count(mirror: 0, .written) == 210 - dropped)
    }

    @Test("a dump that cannot be written is logged with its path and errno")
    func writeFailureLogged() throws {
        let directory = try RealPeerTests.temporaryDirectory()
        let problems = ProblemLog()
        problems.name(main: "m", mainConnectTimeoutMs: 0, dumpDirectory: directory)
        let servers = [ProxyAddress](repeating: ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(start: nil, count: 0), port: 1),
                                     count: 2)
        let writer = try DumpWriter(directory: directory, maxFiles: 10, servers: servers, mirrorNames: ["m"], problems: problems)
        try FileManager.default.removeItem(atPath: directory)
        try writer.start()
        writer.submit(Self.request(bytes: 10))
        writer.stop()
        #expect(writer.count(mirror: 0, .failed) == 1)
        let lines = problems.lines(nowMs: 1)
        #expect(lines.count == 1)
        #expect(lines.first?.contains("\(directory)/dump-") == true && lines.first?.contains("(ENOENT)") == true, "\(lines)")
    }
}

/// The real binary: what its log and its one-line errors say.
@Suite("First hour: the binary's log and refusals", .timeLimit(.minutes(6)))
struct FirstHourCLITests {
    /// Runs `body` against a proxy started with `arguments`, stops it, and
    /// returns its log. Unlike `ProxyProcess`, it waits for the start-up
    /// line instead of connecting: a probe connection would be the first
    /// failure logged, and the test's own would fall in the rate limit.
    static func log(_ backend: Config.Backend, _ arguments: [String], _ body: (UInt16) throws -> Void) throws -> String {
        let port = freePort()
        let logPath = try RealPeerTests.temporaryDirectory() + "/log"
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: logPath).deletingLastPathComponent().path) }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try builtBinary("duplicator"))
        process.arguments = ["-l", "127.0.0.1:\(port)", "--backend", backend.rawValue] + arguments
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        let read = { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        guard eventually(timeoutSeconds: 10, { read().contains("listening on") }) else {
            throw TestFailure("duplicator did not start: \(read())")
        }
        try body(port)
        // The problem log is written on a worker's tick (every 100 ms).
        usleep(400_000)
        kill(process.processIdentifier, SIGTERM)
        #expect(eventually(timeoutSeconds: 15) { !process.isRunning })
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return read()
    }

    @Test("main refusing connects is in the log, with its address and the error", arguments: Config.Backend.tested)
    func mainConnectFailure(backend: Config.Backend) throws {
        let refusing = RefusingPort()
        let log = try Self.log(backend, ["-f", "127.0.0.1:\(refusing.port)"]) { port in
            for _ in 0..<3 { _ = try TestConnection(port: port).exchange(Array("hello\n".utf8), timeoutSeconds: 5) }
        }
        let lines = log.split(separator: "\n").filter { $0.contains("main 127.0.0.1:\(refusing.port): ") }
        // The first tick after the first failure logs it, with those that came meanwhile.
        #expect(lines.first?.contains(" (last: Connection refused (ECONNREFUSED)); ") == true, "\(log)")
        #expect(lines.first?.contains(": 1 connect failure (") == true || lines.first?.contains("connect failures (") == true)
        #expect(lines.count == 1, "rate-limited: one line per 10 s")
    }

    @Test("main not answering connects is in the log, with the timeout", arguments: Config.Backend.tested)
    func mainConnectTimeout(backend: Config.Backend) throws {
        let blackhole = try startServer(.blackhole)
        defer { blackhole.stop() }
        let log = try Self.log(backend, ["-f", "127.0.0.1:\(blackhole.boundPort)", "--main-connect-timeout", "200ms"]) { port in
            _ = try TestConnection(port: port).exchange(Array("hello\n".utf8), timeoutSeconds: 5)
        }
        #expect(log.contains("main 127.0.0.1:\(blackhole.boundPort): 1 connect timeout (no answer within --main-connect-timeout 200ms)"),
                "\(log)")
    }

    @Test("a refused PROXY header is in the log, with the peer and the reason", arguments: Config.Backend.tested)
    func proxyHeaderRefused(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        var clientPort: UInt16 = 0
        let log = try Self.log(backend, ["-f", "127.0.0.1:\(main.boundPort)", "--accept-proxy"]) { port in
            let connection = try TestConnection(port: port)
            clientPort = (try? SocketAddress(boundTo: connection.fd).port) ?? 0
            _ = connection.exchange(Array("GET / HTTP/1.1\r\n\r\n".utf8), timeoutSeconds: 5)
        }
        #expect(log.contains("refused 1 client without a valid PROXY protocol header (last from 127.0.0.1:\(clientPort): "
            + "not a PROXY protocol header)"), "\(log)")
    }

    @Test("a refused client (the memory bound's sessions all live) is in the log", arguments: Config.Backend.tested)
    func admissionRefused(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let log = try Self.log(backend, ["-f", "127.0.0.1:\(main.boundPort)", "--max-sessions", "1", "--threads", "1"]) { port in
            let first = try TestConnection(port: port)
            #expect(first.exchange(Array("one\n".utf8), shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: 4).received.count == 4)
            _ = try TestConnection(port: port).exchange(Array("two\n".utf8), timeoutSeconds: 5)
        }
        #expect(log.contains("refusing clients: this worker's memory bound admits 1 session and none is free (--max-memory, --max-sessions)"), "\(log)")
    }

    @Test("a dump that cannot be written is in the log, with its path and errno")
    func dumpWriteFailure() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let directory = try RealPeerTests.temporaryDirectory()
        let log = try Self.log(.ioUring, ["-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(mirror.boundPort)",
                                          "--compare", "--dump-dir", directory, "--mirror-linger", "200ms"]) { port in
            // The directory goes away after start: each dump's open fails (ENOENT).
            try FileManager.default.removeItem(atPath: directory)
            _ = try TestConnection(port: port).exchange(Array("hello\n".utf8), timeoutSeconds: 5)
            usleep(600_000)
        }
        #expect(log.contains("--dump-dir \(directory): 1 dump not written (last: \(directory)/dump-"), "\(log)")
        #expect(log.contains("No such file or directory (ENOENT))"), "\(log)")
    }

    /// A full disk: a 64 KiB tmpfs mounted on a new directory and filled.
    /// nil where tmpfs cannot be mounted (a container without
    /// CAP_SYS_ADMIN: nothing to test there; the ENOENT test covers the line).
    static func fullDisk() throws -> String? {
        let directory = try RealPeerTests.temporaryDirectory()
        let mounted = try runProgram("/usr/bin/env", ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", directory])
        guard mounted.status == 0 else {
            print("no tmpfs: \(mounted.standardError)")
            try? FileManager.default.removeItem(atPath: directory)
            return nil
        }
        _ = try runProgram("/usr/bin/env", ["dd", "if=/dev/zero", "of=\(directory)/fill", "bs=4k"])
        return directory
    }

    static func removeFullDisk(_ directory: String) {
        _ = try? runProgram("/usr/bin/env", ["umount", directory])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The issue's case: a full disk (a 64 KiB tmpfs, filled). Needs root
    /// and a mount namespace that allows tmpfs; the ENOENT test above runs everywhere.
    @Test("a full disk: dumps not written are logged with ENOSPC", .enabled(if: geteuid() == 0, "needs root to mount a tmpfs"))
    func dumpOnFullDisk() throws {
        guard let directory = try Self.fullDisk() else { return }
        defer { Self.removeFullDisk(directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let log = try Self.log(.ioUring, ["-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(mirror.boundPort)",
                                          "--compare", "--dump-dir", directory, "--mirror-linger", "200ms"]) { port in
            _ = try TestConnection(port: port).exchange(Array("hello\n".utf8), timeoutSeconds: 5)
            usleep(600_000)
        }
        #expect(log.contains("--dump-dir \(directory): 1 dump not written (last: \(directory)/dump-"), "\(log)")
        #expect(log.contains("No space left on device (ENOSPC))"), "\(log)")
    }

    /// Recording on a full disk (issue 23): the proxy keeps serving every
    /// client, and the failure is logged once for the run of failures, not
    /// once per recording. Both backends.
    @Test("a full disk under --record-dir: every client served, the failure logged once with ENOSPC",
          .enabled(if: geteuid() == 0, "needs root to mount a tmpfs"), arguments: Config.Backend.tested)
    func recordOnFullDisk(backend: Config.Backend) throws {
        guard let directory = try Self.fullDisk() else { return }
        defer { Self.removeFullDisk(directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let message = Array(repeating: UInt8(ascii: "r"), count: 20_000) + [UInt8(ascii: "\n")]
        var echoed = 0
        let log = try Self.log(backend, ["-f", "127.0.0.1:\(main.boundPort)", "--record-dir", directory]) { port in
            for _ in 0..<5 {
                let connection = try TestConnection(port: port)
                if connection.exchange(message, timeoutSeconds: 5).received == message { echoed += 1 }
                usleep(150_000)
            }
        }
        #expect(echoed == 5, "every client is served while nothing can be recorded")
        let failures = log.components(separatedBy: "--record-dir: a recording not written (").count - 1
        #expect(failures == 1, "logged once for the run of failures: \(log)")
        #expect(log.contains("No space left on device (ENOSPC)"), "\(log)")
    }

    @Test("one label in the log, and --check's facts one per line, the same at start-up")
    func labelAndCheckLines() throws {
        let binary = try builtBinary("duplicator")
        let arguments = ["-l", "127.0.0.1:0", "-f", ":9", "-m", ":10", "--threads", "1", "--max-memory", "1MiB", "--compare"]
        let checked = try runProgram(binary, arguments + ["--check"], timeoutSeconds: 10)
        #expect(checked.status == 0, "\(checked.standardError)")
        let lines = checked.standardOutput.split(separator: "\n").map(String.init)
        #expect(lines.first == "configuration ok")
        for prefix in ["listen: ", "main: :9", "mirrors: 1: :10", "backend: ", "workers: 1",
                       "memory per worker: a buffer pool of up to 1 MiB (64 slots of 16 KiB)", "sessions per worker: ",
                       "limits: mirror connect timeout 500ms", "compare: ", "zero-copy: "] {
            #expect(lines.contains { $0.hasPrefix(prefix) }, "\(prefix) in \(lines)")
        }
        #expect(!checked.standardOutput.contains("0 MiB"))
        #expect(lines.allSatisfy { $0.count < 200 }, "one fact per line")

        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try ProxyProcess(["-f", "127.0.0.1:\(main.boundPort)", "--threads", "1", "--max-memory", "1MiB"], port: freePort())
        #expect(proxy.signalAndWait(SIGTERM) == 0)
        let log = proxy.standardError
        #expect(log.contains(" info duplicator: memory per worker: a buffer pool of up to 1 MiB"), "\(log)")
        #expect(log.contains(" info duplicator: sessions per worker: "), "\(log)")
        // Lines of the engine and of the command alike: "<time> <level> duplicator: <text>", no module tag.
        for line in log.split(separator: "\n") {
            #expect(line.contains(" duplicator: ") && !line.contains("[Duplicator]") && !line.contains("[duplicator]"), "\(line)")
        }
    }

    @Test("refused at start with one line: metrics on main's or a mirror's address, -t 0, too short durations", arguments: [
        (["-m", ":10", "--metrics", "127.0.0.1:9"], "--metrics 127.0.0.1:9 is the main server's address (-f :9)"),
        (["-m", ":10", "--metrics", ":10"], "--metrics :10 is a mirror's address (-m :10)"),
        (["-m", ":10", "-t", "0"], "-t 0: a mirror connect timeout is needed"),
        (["-m", ":10", "-t", "10ms"], "the smallest is 100ms"),
        (["--stats-interval", "10ms"], "--stats-interval 10ms: too often; the smallest is 1s (or 0: never)"),
        (["--stats-interval", "1ns"], "--stats-interval '1ns': not a whole number of this option's smallest unit, 1ms"),
        (["--dump-queue", "10"], "--dump-queue must be from 1MiB"),
    ])
    func refusedAtStart(extra: [String], expected: String) throws {
        for check in [[], ["--check"]] {
            let result = try runProgram(try builtBinary("duplicator"), ["-l", "127.0.0.1:0", "-f", ":9"] + extra + check,
                                        timeoutSeconds: 10)
            #expect(result.status != 0)
            #expect(result.errorLines.count == 1, "\(result.standardError)")
            #expect(result.standardError.contains(expected), "\(result.standardError)")
        }
    }

    @Test("demo: the proxy's size and duration types, and its failures in one readable line", arguments: [
        (["-d", "-1s"], "-d '-1s': negative durations are refused"),
        (["-s", "1G"], "--size must be from 1 byte to 64MiB, got 1GiB"),
        (["-s", "big"], "-s 'big': expected bytes, like 65536, 64KiB or 4MiB"),
        (["-p", "100000"], "--connections must be from 1 to 10000, got 100000"),
    ])
    func demoRefusals(arguments: [String], expected: String) throws {
        let result = try runProgram(try builtBinary("duplicator"), ["demo"] + arguments, timeoutSeconds: 20)
        #expect(result.status != 0)
        #expect(result.errorLines.count == 1, "\(result.standardError)")
        #expect(result.standardError.contains(expected), "\(result.standardError)")
        #expect(!result.standardError.contains("ExitCode"))
    }

    @Test("demo with too few descriptors says so in one line", .enabled(if: Peers.runnable("prlimit"), "needs prlimit"))
    func demoOutOfDescriptors() throws {
        let result = try runProgram(try Peers.require("prlimit"), ["--nofile=60", try builtBinary("duplicator"), "demo",
                                                                     "-p", "40", "-d", "1s", "-s", "1KiB"], timeoutSeconds: 30)
        #expect(result.status == 1)
        // Warnings of the proxy may come first (accept failed: EMFILE); the error is the last line, and one.
        #expect(result.errorLines.filter { $0.hasPrefix("duplicator: ") }.count == 1, "\(result.standardError)")
        #expect(result.errorLines.last?.hasPrefix("duplicator: demo failed: ") == true, "\(result.standardError)")
        #expect(!result.standardError.contains("ExitCode"))
    }

    @Test("demo takes sizes with the proxy's suffixes")
    func demoSizes() throws {
        let result = try runProgram(try builtBinary("duplicator"), ["demo", "-s", "4KiB", "-d", "1s", "-p", "2"], timeoutSeconds: 30)
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("2 connections x 4096 bytes"), "\(result.standardOutput)")
    }
}

/// The man page's sections beyond the options come from the binary too
/// (its hidden `manual-sections`), so they cannot drift from the code.
@Suite("First hour: the man page")
struct FirstHourManualTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    @Test("SIGNALS, EXIT STATUS, FILES and METRICS, the last listing every metric family the code defines",
          .enabled(if: Peers.runnable("python3"), "needs python3"))
    func sections() throws {
        let result = try runProgram(try Peers.require("python3"), [Self.root + "/scripts/manpage.py",
                                                                  try builtBinary("duplicator"), BuildInfo.version])
        #expect(result.status == 0, "\(result.standardError)")
        let page = result.standardOutput
        var previous = page.startIndex
        for title in ["OPTIONS", "SIGNALS", "EXIT STATUS", "FILES", "METRICS", "VERSION"] {
            let found = page.range(of: "\n.SH \(title)\n")
            #expect(found != nil, "\(title) missing")
            if let found {
                #expect(found.lowerBound >= previous, "\(title) out of order")
                previous = found.lowerBound
            }
        }
        // OPTIONS in --help's groups, in its order, the untitled ones last.
        var group = page.range(of: "\n.SH OPTIONS")?.upperBound ?? page.startIndex
        for title in ["Addresses", "Mirrors", "Limits and timeouts", "Verdicts and recording", "Observability", "Tuning", "Other options"] {
            let found = page.range(of: "\n.SS \(title)\n", range: group..<page.endIndex)
            #expect(found != nil, "OPTIONS has no group \(title) after the one before")
            if let found { group = found.upperBound }
        }
        for signal in ["SIGINT, SIGTERM", "SIGUSR1", "SIGHUP"] { #expect(page.contains("\\fB\(signal)\\fR"), "\(signal)") }
        for status in ["0", "1", "64"] { #expect(page.contains(".TP\n\\fB\(status)\\fR\n"), "exit status \(status)") }
        let metrics = String(page[page.range(of: "\n.SH METRICS\n")!.upperBound...])
        let families = PrometheusText.families()
        #expect(families.count > 20)
        for family in families {
            #expect(metrics.contains("\\fB\(family.name) (\(family.type))\\fR"), "\(family.name) missing from METRICS")
        }
        #expect(!page.contains("MANUAL\\-SECTIONS") && !page.contains("MANUAL-SECTIONS"), "the hidden command is not a section")
    }
}

/// `make test` installs what the suites need, from the one list CI uses too.
@Suite("First hour: test dependencies")
struct FirstHourTestDepsTests {
    @Test("every program the suites ask Peers for is installed by scripts/test-deps.sh, and CI keeps no list of its own")
    func oneList() throws {
        let root = FirstHourManualTests.root
        let script = try String(contentsOfFile: root + "/scripts/test-deps.sh", encoding: .utf8)
        let ci = try String(contentsOfFile: root + "/.ci/run", encoding: .utf8)
        let makefile = try String(contentsOfFile: root + "/Makefile", encoding: .utf8)
        #expect(ci.contains("scripts/test-deps.sh") && !ci.contains("apt-get install"))
        #expect(makefile.contains("test: test-deps"), "make test installs them first")
        #expect(script.contains("policy-rc.d"), "the packages' services must not start")
        // What every Debian system has (util-linux, coreutils).
        let base: Set<String> = ["prlimit", "setpriv", "timeout", "python3", "bash", "sh"]
        let tests = root + "/Tests"
        var asked: Set<String> = []
        for case let file as String in FileManager.default.enumerator(atPath: tests)! where file.hasSuffix(".swift") {
            let text = try String(contentsOfFile: tests + "/" + file, encoding: .utf8)
            for call in ["Peers.require(\"", "Peers.runnable(\""] {
                var rest = Substring(text)
                while let start = rest.range(of: call) {
                    rest = rest[start.upperBound...]
                    // runnable("a", "b"): every quoted name up to the closing parenthesis.
                    let arguments = rest.prefix { $0 != ")" }
                    for (index, piece) in arguments.split(separator: "\"", omittingEmptySubsequences: false).enumerated()
                    where index % 2 == 0 && !piece.isEmpty && piece.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) {
                        asked.insert(String(piece))
                    }
                }
            }
        }
        #expect(asked.isSuperset(of: ["nginx", "haproxy", "redis-server", "tshark", "curl", "nft"]), "\(asked.sorted())")
        for program in asked.subtracting(base) {
            #expect(script.contains(" \(program):") || script.contains(" \(program) "), "\(program) is not in scripts/test-deps.sh")
        }
    }
}

/// The `incomplete` verdicts of issue 27 ("4 of 20 longer sessions on a full
/// disk"): not the disk. A mirror's replies are read as they come while
/// main's are paced by its client; when the mirror led main by more than the
/// verbatim part of the window, its bytes spilled into block digests, and
/// main's stream then ending inside a block could not be decided. How far
/// it led depended on how the threads ran (the dump writer's work was
/// enough). Now the mirror waits in its socket while it leads that far.
@Suite("First hour: verdicts that do not depend on timing")
struct FirstHourVerdictTests {
    @Test("a mirror far ahead of main waits for it, and a longer mirror is longer, not incomplete")
    func mirrorWaitsForMain() throws {
        var limits = SessionLimits(mirrorCount: 1, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                                   backlogBytesMax: 1 << 20, backlogChunksMax: 64, readAheadChunks: 2, mirrorLingerMs: 2_000,
                                   mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        limits.compareWindowBytes = 64 << 10
        let io = try FakeSessionIO(limits: limits, slotCount: 64, slotSize: 4096, sessions: 1)
        try #require(io.start() != nil)
        let key = try #require(io.lastKey)
        io.connectAll()
        io.completeRecv(.client, TestBytes.text("GET big\n"))
        io.flushAllSends()
        // 100000 bytes, ending inside a 4 KiB block of the spill; the mirror adds 6.
        let reply = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        let mirrorReply = reply + Array("extra\n".utf8)
        var mirrorSent = 0
        func mirrorReplies() {
            while mirrorSent < mirrorReply.count, io.hasPending(.recv, .mirror(0)) {
                let piece = Array(mirrorReply[mirrorSent..<min(mirrorReply.count, mirrorSent + 4096)])
                io.completeRecv(.mirror(0), piece)
                mirrorSent += piece.count
            }
        }
        // Main has not replied yet: the mirror's replies are read up to the verbatim window, then wait.
        mirrorReplies()
        #expect(mirrorSent < 64 << 10 && mirrorSent > 32 << 10, "\(mirrorSent) bytes read ahead")
        #expect(!io.hasPending(.recv, .mirror(0)) && !io.hasPending(.discard, .mirror(0)), "the mirror waits for main")
        var mainSent = 0
        while mainSent < reply.count {
            let piece = Array(reply[mainSent..<min(reply.count, mainSent + 4096)])
            io.completeRecv(.main, piece)
            mainSent += piece.count
            io.flushAllSends()
            mirrorReplies()
        }
        io.completeEOF(.client)
        io.flushAllSends()
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeEOF(.main)
        mirrorReplies()
        #expect(mirrorSent == mirrorReply.count)
        io.flushAllSends()
        io.completeShutdown(.client)
        if io.hasPending(.recv, .mirror(0)) { io.completeEOF(.mirror(0)) } else { io.completeDiscard(.mirror(0), result: 0) }
        #expect(io.session(key) == nil, "the session ended")
        #expect(io.ended[key]?.mirrorVerdicts == [.longer])
        #expect(io.sent(to: .client, key) == reply)
        io.expectQuiescent()
    }

    @Test("the wait is for the mirror alone: main leading is kept in digests as before")
    func mainNeverWaits() {
        let window = UnsafeMutableRawPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { window.deallocate() }
        var comparison = ReplyComparison(window: window, windowBytes: 64 << 10)
        let bytes = [UInt8](repeating: 0x41, count: 60 << 10)
        bytes.withUnsafeBytes { comparison.append(.main, $0) }
        #expect(!comparison.mirrorShouldWait(forBytes: 4096), "main leads: the mirror reads on")
        var mirrorAhead = ReplyComparison(window: window, windowBytes: 64 << 10)
        bytes.prefix(50 << 10).withUnsafeBytes { mirrorAhead.append(.mirror, UnsafeRawBufferPointer(rebasing: $0[...])) }
        #expect(!mirrorAhead.mirrorShouldWait(forBytes: 4096), "50 KiB + 4 KiB still fit the 56 KiB kept verbatim")
        #expect(mirrorAhead.mirrorShouldWait(forBytes: 16 << 10), "50 KiB + 16 KiB would spill")
        #expect(!mirrorAhead.mirrorShouldWait(forBytes: 56 << 10), "a receive as large as the window cannot be kept from spilling")
    }
}

/// On a healthy disk no dump is lost to the queue: the writer's queue was
/// 16 requests, and 12 of 60 dumps of a burst were dropped.
@Suite("First hour: dumps of a burst", .timeLimit(.minutes(6)))
struct FirstHourDumpBurstTests {
    @Test("100 diverging sessions at once: 100 dumps written, none dropped", arguments: Config.Backend.tested)
    func burst(backend: Config.Backend) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let flipping = try VariantEchoServer(.flipByte(at: 3))
        defer { flipping.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [flipping.port]) {
            $0.compare = true
            $0.dumpDirectory = directory
            $0.mirrorLingerMs = 5_000
        }
        var stopped = false
        defer { if !stopped { proxy.shutdown() } }
        let sessions = 100
        let failures = try echoSessions(sessions, port: proxy.port) { index in Array("burst session \(index)\n".utf8) }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(eventually(timeoutSeconds: 20) { proxy.activeSessions == 0 })
        proxy.shutdown()  // the writer writes what it was handed, then ends
        stopped = true
        let snapshot = proxy.snapshot()
        #expect(snapshot.mirrors[0].compared(.diverged) == UInt64(sessions))
        #expect(snapshot.mirrors[0].dumps == [UInt64(sessions), 0, 0, 0], "written, skipped_limit, dropped_queue, failed")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".pcapng") }
        #expect(files.count == sessions)
    }
}
