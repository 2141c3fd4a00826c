import Foundation
import Glibc
import Platform
import Testing
import TestSupport
@testable import Duplicator
import Ring

/// The built `duplicator` binary, next to the test bundle.
func builtBinary(_ name: String) throws -> String {
    var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    if !exe.isEmpty { directory = URL(fileURLWithPath: exe).deletingLastPathComponent() }
    for candidate in [directory, directory.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw TestFailure("\(name) not built next to \(directory.path); run `swift build` first")
}

struct ProcessResult {
    let status: Int32
    let standardError: String
    let standardOutput: String
    var errorLines: [Substring] { standardError.split(separator: "\n") }
    /// Standard output, one line each.
    var lines: [Substring] { standardOutput.split(separator: "\n") }
}

/// Runs a program to completion (bounded by `timeoutSeconds`), capturing its output.
func runProgram(_ path: String, _ arguments: [String], timeoutSeconds: Double = 20) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let errorPipe = Pipe()
    let outputPipe = Pipe()
    process.standardError = errorPipe
    process.standardOutput = outputPipe
    try process.run()
    // Both pipes are read while the program runs: one that writes more than
    // a pipe holds (64 KiB; `--experimental-dump-help` does) would otherwise
    // block in write(2) and never exit.
    let error = PipeReader(errorPipe)
    let output = PipeReader(outputPipe)
    let deadline = monotonicSeconds() + timeoutSeconds
    while process.isRunning && monotonicSeconds() < deadline { usleep(10_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw TestFailure("\(path) \(arguments) did not exit in \(timeoutSeconds)s")
    }
    process.waitUntilExit()
    return ProcessResult(status: process.terminationStatus, standardError: error.text(), standardOutput: output.text())
}

/// Reads a pipe to its end on a thread of its own.
final class PipeReader: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    /// Everything the pipe carried, once its writers have closed it.
    func text() -> String {
        done.wait()
        return String(decoding: data, as: UTF8.self)
    }
}

/// Promise 8: bad input gets one clear line and a non-zero exit, never a trap.
@Suite("CLI: bad input", .timeLimit(.minutes(6)))
struct CLITests {
    static let badInputs: [(arguments: [String], expected: String)] = [
        (["--bogus", "-l", ":1", "-f", ":2"], "Unknown option"),
        (["-l", "nowhere", "-f", ":2"], "-l 'nowhere': expected host:port, :port or [ipv6]:port"),
        (["-l", ":70000", "-f", ":2"], "port must be a number"),
        (["-l", ":0", "-f", ":0"], "port must be a number"),
        (["-l", "::1:80", "-f", ":2"], "brackets"),
        (["-l", ":1"], "Missing expected argument"),
        (["-l", ":1", "-f", ":2", "-m", ":3,,:4"], "empty mirror address"),
        (["-l", ":1", "-f", ":2", "--backend", "uring"], "--backend 'uring': expected auto, io_uring or epoll"),
        // Sampling: `-m ADDR@P%`, also inside a comma list.
        (["-l", ":1", "-f", ":2", "-m", ":3@"], "-m ':3@': expected a percentage above 0 and at most 100 after '@'"),
        (["-l", ":1", "-f", ":2", "-m", ":3@10"], "-m ':3@10': expected a percentage"),
        (["-l", ":1", "-f", ":2", "-m", ":3@0%"], "the percentage must be above 0% and at most 100%, got 0%"),
        (["-l", ":1", "-f", ":2", "-m", ":4,:3@100.5%"], "got 100.5%"),
        (["-l", ":1", "-f", ":2", "-m", ":3@nan%"], "-m ':3@nan%': expected a percentage"),
        (["-l", ":1", "-f", ":2", "-m", ":3@1e2%"], "-m ':3@1e2%': expected a percentage"),
        (["-l", ":1", "-f", ":2", "-m", ":3@%"], "-m ':3@%': expected a percentage"),
        (["-l", ":1", "-f", ":2", "-m", "@10%"], "address ''"),
        (["-l", ":1", "-f", ":2", "--compare", "--compare-window", "1k"], "--compare-window must be from 4KiB to 16MiB"),
        (["-l", ":1", "-f", ":2", "--compare-window", "lots"], "--compare-window 'lots': expected bytes, like 65536, 64KiB or 4MiB"),
        // --dump-dir: only with --compare, into a directory that exists and may be written.
        (["-l", ":1", "-f", ":2", "-m", ":3", "--dump-dir", "/tmp"], "--dump-dir /tmp: needs --compare"),
        (["-l", ":1", "-f", ":2", "-m", ":3", "--compare", "--dump-dir", "/nonexistent/dumps"], "--dump-dir /nonexistent/dumps: No such file or directory"),
        (["-l", ":1", "-f", ":2", "-m", ":3", "--compare", "--dump-dir", "/etc/hostname"], "--dump-dir /etc/hostname: not a directory"),
        (["-l", ":1", "-f", ":2", "-m", ":3", "--compare", "--dump-dir", "/tmp", "--dump-bytes", "0"], "--dump-bytes must be from 1 byte to 64MiB"),
        (["-l", ":1", "-f", ":2", "-m", ":3", "--compare", "--dump-dir", "/tmp", "--dump-bytes", "lots"], "--dump-bytes 'lots': expected bytes"),
        (["-l", ":1", "-f", ":2", "-m", ":3", "--compare", "--dump-dir", "/tmp", "--dump-max-files", "0"], "--dump-max-files must be from 1 to 1000000"),
        (["-l", ":1", "-f", ":2", "-m", ":3", "--compare", "--dump-dir", "/tmp", "--dump-max-files", "x"], "dump-max-files"),
        (["-l", ":1", "-f", ":2", "-t", "5"], "-t '5': expected a number with a unit, like 500ms, 2s or 1m30s"),
        (["-l", ":1", "-f", ":2", "-t", "soon"], "-t 'soon': expected a number with a unit"),
        (["-l", ":1", "-f", ":2", "--max-memory", "512KiB"], "--max-memory must be at least 1MiB"),
        (["-l", ":1", "-f", ":2", "--max-memory", "2MiB", "--threads", "64"], "raise --max-memory"),
        (["-l", ":1", "-f", ":2", "--idle-timeout", "soon"], "--idle-timeout 'soon': expected a number with a unit"),
        (["-l", ":1", "-f", ":2", "--slot-size", "12q"], "--slot-size '12q': expected bytes"),
        (["-l", ":1", "-f", ":2", "--threads", "0"], "--threads"),
        (["-l", ":1", "-f", ":2", "--mirror-discard-batch", "2MiB"], "--mirror-discard-batch must be from 0 to 1MiB"),
        (["-l", ":1", "-f", ":2", "--mirror-batch-bytes", "1GiB"], "--mirror-batch-bytes must be from 0 to 16MiB"),
        (["-l", ":1", "-f", ":2", "--mirror-batch-delay", "1s"], "--mirror-batch-delay must be from 0 to 100ms"),
        (["-l", ":1", "-f", ":2", "--mirror-batch-delay", "-1ms"], "--mirror-batch-delay '-1ms': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--mirror-batch-delay", "soon"], "--mirror-batch-delay 'soon': expected a number with a unit"),
        (["-l", ":1", "-f", ":2", "--log-level", "loud"], "--log-level 'loud': expected trace, debug, info, notice, warning, error, critical"),
        (["-l", ":1", "-f", ":2", "--zerocopy", "maybe"], "--zerocopy 'maybe': expected auto, on or off"),
        (["-l", "127.0.0.1:0", "-f", ":9", "--backend", "epoll", "--zerocopy", "on"],
         "--zerocopy on: zero-copy sends need the io_uring backend, and this worker runs on epoll"),
        (["-l", "127.0.0.1:0", "-f", "no-such-host.invalid:80"], "cannot resolve"),
        (["-l", "127.0.0.1:0", "-f", ":80", "-m", "[::1"], "missing ']'"),
        // Given twice: the last one used to win silently.
        (["-l", "127.0.0.1:1", "-l", "127.0.0.1:2", "-f", ":3"], "-l given 2 times (127.0.0.1:1, 127.0.0.1:2): give it once"),
        (["-l", "127.0.0.1:1", "-f", ":2", "--forward", ":3"], "-f given 2 times"),
        // Negative values reach their check instead of "Missing value".
        (["-l", ":1", "-f", ":2", "-t", "-1s"], "-t '-1s': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--timeout", "-500ms"], "--timeout '-500ms': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--main-connect-timeout", "-1s"], "--main-connect-timeout '-1s': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--mirror-linger", "-1ms"], "--mirror-linger '-1ms': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--drain-timeout", "-5s"], "--drain-timeout '-5s': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--stats-interval", "-1s"], "--stats-interval '-1s': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--wait-batch-timeout", "-1us"], "--wait-batch-timeout '-1us': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--idle-timeout", "-10m"], "--idle-timeout '-10m': negative durations are refused"),
        (["-l", ":1", "-f", ":2", "--max-memory", "-1GiB"], "--max-memory '-1GiB': expected bytes"),
        (["-l", ":1", "-f", ":2", "--threads", "-1"], "--threads must be from 1 to 256, got -1"),
        (["-l", ":1", "-f", ":2", "--backlog", "-1MiB"], "--backlog '-1MiB': expected bytes"),
        // Units kept exactly or refused: a duration finer than its setting's unit is not rounded.
        (["-l", ":1", "-f", ":2", "-t", "1500us"], "-t '1500us': not a whole number of this option's smallest unit, 1ms"),
        (["-l", ":1", "-f", ":2", "--idle-timeout", "0.5ms"], "--idle-timeout '0.5ms': not a whole number of this option's smallest unit, 1ms"),
        (["-l", ":1", "-f", ":2", "--mirror-batch-delay", "1500ns"], "--mirror-batch-delay '1500ns': not a whole number of this option's smallest unit, 1us"),
        (["-l", ":1", "-f", ":2", "--mirror-turn-timeout", "250us"], "--mirror-turn-timeout 250us: must be from 1ms to 1m"),
        (["-l", ":1", "-f", ":2", "--ring-mode", "fast"], "--ring-mode 'fast': expected defer, coop or plain"),
        (["-l", ":1", "-f", ":2", "--send-proxy", "v3"], "--send-proxy 'v3': expected v1 or v2"),
        (["-l", ":1", "-f", ":2", "--metrics", "nowhere"], "--metrics 'nowhere': expected host:port"),
        // Loops, main twice, a mirror twice, metrics on the listener: refused
        // before anything binds, so these fixed ports are never used.
        (["-l", "127.0.0.1:47101", "-f", "127.0.0.1:47101"], "-f 127.0.0.1:47101 is this proxy's own listen address"),
        (["-l", "127.0.0.1:47102", "-f", "localhost:47102", "--check"], "-f localhost:47102 is this proxy's own listen address"),
        (["-l", "127.0.0.1:47103", "-f", ":47104", "-m", ":47105,localhost:47103", "--check"],
         "-m localhost:47103 is this proxy's own listen address"),
        (["-l", "127.0.0.1:0", "-f", ":47106", "-m", "localhost:47106"], "every client byte would reach main twice"),
        (["-l", "127.0.0.1:0", "-f", ":47107", "-m", ":47108", "-m", "127.0.0.1:47108", "--check"],
         "-m 127.0.0.1:47108 is the same mirror as -m :47108"),
        (["-l", "127.0.0.1:47109", "-f", ":47110", "--metrics", "127.0.0.1:47109", "--check"],
         "--metrics 127.0.0.1:47109 is the listen address"),
    ]

    @Test("bad flags, addresses, durations and sizes", arguments: 0..<badInputs.count)
    func badInput(index: Int) throws {
        let (arguments, expected) = Self.badInputs[index]
        let result = try runProgram(try builtBinary("duplicator"), arguments)
        #expect(result.status != 0)
        #expect(result.errorLines.count == 1, "stderr: \(result.standardError)")
        #expect(result.standardError.contains(expected), "stderr: \(result.standardError)")
        #expect(!result.standardError.contains("Fatal error"))
    }

    @Test("a port in use")
    func portInUse() throws {
        let taken = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(taken) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
                _ = bind(taken, pointer, length)
                return getsockname(taken, pointer, &length)
            }
        }
        #expect(listen(taken, 1) == 0)
        let port = UInt16(bigEndian: address.sin_port)
        let result = try runProgram(try builtBinary("duplicator"), ["-l", "127.0.0.1:\(port)", "-f", ":9"])
        #expect(result.status != 0)
        #expect(result.errorLines.count == 1, "stderr: \(result.standardError)")
        #expect(result.standardError.contains("cannot listen on 127.0.0.1:\(port): Address already in use (EADDRINUSE)"),
                "stderr: \(result.standardError)")
    }

    @Test("--check names the mirrors, the sampled shares, and how mirrors get their bytes (nothing of it without mirrors)")
    func checkDescribesMirrors() throws {
        let binary = try builtBinary("duplicator")
        let none = try runProgram(binary, ["-l", "127.0.0.1:0", "-f", ":9", "--threads", "1", "--check"])
        #expect(none.status == 0 && none.standardOutput.contains("\nmain: :9\nmirrors: none\n"), "\(none.standardOutput)")
        #expect(!none.standardOutput.contains("mirror sends"), "\(none.standardOutput)")
        let some = try runProgram(binary, ["-l", "127.0.0.1:0", "-f", ":9", "-m", ":10@10%,:11@2.5%", "-m", ":12",
                                           "--mirror-turns", "0", "--threads", "1", "--check"])
        #expect(some.status == 0, "stderr: \(some.standardError)")
        #expect(some.standardOutput.contains("\nmirrors: 3: :10 on 10% of sessions, :11 on 2.5% of sessions, :12\n"),
                "\(some.standardOutput)")
        #expect(some.standardOutput.contains("\nmirror sends: batched up to 64 KiB or 1ms\n"), "\(some.standardOutput)")
        #expect(!some.standardOutput.contains("mirror turns"), "--mirror-turns 0 keeps none")
    }

    /// Units kept exactly: a duration in a setting's own unit is what runs,
    /// not rounded to another (250us used to become 1ms).
    @Test("a duration is kept in its setting's unit exactly: --mirror-turn-timeout 1500us runs as 1500us, -t 1.5s as 1500ms")
    func unitsKeptExactly() throws {
        let result = try runProgram(try builtBinary("duplicator"),
                                    ["-l", "127.0.0.1:0", "-f", ":9", "-m", ":10", "--threads", "1", "--check",
                                     "--mirror-turn-timeout", "1500us", "--mirror-batch-delay", "250us", "-t", "1.5s"])
        #expect(result.status == 0, "stderr: \(result.standardError)")
        #expect(result.standardOutput.contains("up to 1500us each"), "\(result.standardOutput)")
        #expect(result.standardOutput.contains("batched up to 64 KiB or 250us"), "\(result.standardOutput)")
        #expect(result.standardOutput.contains("mirror connect timeout 1500ms"), "\(result.standardOutput)")
    }

    @Test("--check says what --zerocopy comes to on this kernel", arguments: [
        ([] as [String], "zero-copy sends of 16KiB or more to peers not on this host ("),
        (["--zerocopy", "on"], "zero-copy sends for every send ("),
        (["--zerocopy", "off"], "zero-copy sends off"),
        (["--backend", "epoll"], "no zero-copy sends (the epoll backend has none)"),
    ])
    func checkDescribesZeroCopy(extra: [String], expected: String) throws {
        let result = try runProgram(try builtBinary("duplicator"),
                                    ["-l", "127.0.0.1:0", "-f", ":9", "-m", ":10", "--threads", "1", "--check"] + extra)
        #expect(result.status == 0, "stderr: \(result.standardError)")
        #expect(result.standardOutput.contains(expected), "stdout: \(result.standardOutput)")
    }

    @Test("--check says how many sessions each worker admits within --max-memory")
    func checkShowsTheMemoryModel() throws {
        let binary = try builtBinary("duplicator")
        for (extra, expected) in [([] as [String], "memory per worker: a buffer pool of up to 512 MiB"),
                                  ([] as [String], "sessions per worker: 4096 at once"),
                                  (["--max-memory", "64MiB"], "memory per worker: a buffer pool of up to 32 MiB"),
                                  (["--max-memory", "64MiB"], "sessions per worker: 256 at once")] {
            let result = try runProgram(binary, ["-l", "127.0.0.1:0", "-f", ":9", "-m", ":10", "--threads", "2", "--check"] + extra,
                                        timeoutSeconds: 10)
            #expect(result.status == 0, "stderr: \(result.standardError)")
            #expect(result.standardOutput.contains(expected), "stdout: \(result.standardOutput)")
        }
    }

    @Test("--check refuses a loop with the same line as a real start")
    func checkRefusesLoop() throws {
        let port = freePort()
        let arguments = ["-l", "127.0.0.1:\(port)", "-f", ":\(port)"]
        let started = try runProgram(try builtBinary("duplicator"), arguments, timeoutSeconds: 10)
        let checked = try runProgram(try builtBinary("duplicator"), arguments + ["--check"], timeoutSeconds: 10)
        for result in [started, checked] {
            #expect(result.status != 0)
            #expect(result.errorLines.count == 1, "stderr: \(result.standardError)")
            #expect(result.standardError.contains("-f :\(port) is this proxy's own listen address (-l 127.0.0.1:\(port))"),
                    "stderr: \(result.standardError)")
        }
        #expect(checked.standardError == started.standardError)
        #expect(!checked.standardOutput.contains("configuration ok"))
    }

    @Test("a second instance on the port, or metrics on it, is refused while the first runs")
    func secondInstance() throws {
        let port = freePort()
        let main = RefusingPort()
        // Two workers: our own SO_REUSEPORT group still forms.
        let first = try ProxyProcess(["-f", "127.0.0.1:\(main.port)", "--threads", "2"], port: port)
        let binary = try builtBinary("duplicator")
        for extra in [[], ["--check"]] {
            let result = try runProgram(binary, ["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.port)"] + extra,
                                        timeoutSeconds: 10)
            #expect(result.status != 0)
            #expect(result.errorLines.count == 1, "stderr: \(result.standardError)")
            #expect(result.standardError.contains("cannot listen on 127.0.0.1:\(port): Address already in use (EADDRINUSE)"),
                    "stderr: \(result.standardError)")
        }
        let metrics = try runProgram(binary, ["-l", "127.0.0.1:0", "-f", "127.0.0.1:\(main.port)",
                                              "--metrics", "127.0.0.1:\(port)", "--check"], timeoutSeconds: 10)
        #expect(metrics.status != 0)
        #expect(metrics.errorLines.count == 1, "stderr: \(metrics.standardError)")
        #expect(metrics.standardError.contains("cannot listen for metrics on 127.0.0.1:\(port): Address already in use"),
                "stderr: \(metrics.standardError)")
        #expect(first.process.isRunning)
        #expect((try? TestConnection(port: port, timeoutSeconds: 1)) != nil)
    }

    @Test("--help shows examples and exits 0")
    func help() throws {
        let result = try runProgram(try builtBinary("duplicator"), ["--help"])
        #expect(result.status == 0)
        #expect(result.standardOutput.contains("duplicator -l :8080 -f :8081 -m :8082 -m :8083"))
        // `run`, the old hidden name of the proxy kept for the project's own scripts, is gone with them.
        let run = try runProgram(try builtBinary("duplicator"), ["run", "-l", "127.0.0.1:0", "-f", ":9", "--check"])
        #expect(run.status != 0 && run.errorLines == ["duplicator: Unexpected argument 'run'"], "\(run.standardError)")
    }

    /// `--mirror-discard-batch` was called `--mirror-drain-batch` ("drain" is
    /// now only the graceful stop); the old spelling, kept hidden for the
    /// project's own scripts, is gone with them.
    @Test("--mirror-discard-batch sets its setting; the old name --mirror-drain-batch is an unknown option")
    func mirrorDiscardBatch() throws {
        let binary = try builtBinary("duplicator")
        let base = ["-l", "127.0.0.1:0", "-f", ":9", "-m", ":10", "--threads", "1", "--check"]
        let accepted = try runProgram(binary, base + ["--mirror-discard-batch", "32KiB"], timeoutSeconds: 10)
        #expect(accepted.status == 0, "\(accepted.standardError)")
        // The value reaches the setting: its bound is checked.
        let refused = try runProgram(binary, base + ["--mirror-discard-batch", "2MiB"], timeoutSeconds: 10)
        #expect(refused.status != 0 && refused.errorLines.count == 1
                && refused.standardError.contains("--mirror-discard-batch must be from 0 to 1MiB, got 2097152"),
                "\(refused.standardError)")
        let old = try runProgram(binary, base + ["--mirror-drain-batch", "32KiB"], timeoutSeconds: 10)
        #expect(old.status != 0 && old.errorLines == ["duplicator: Unknown option '--mirror-drain-batch'"], "\(old.standardError)")
    }

    /// The help shows each documented default (ParserTests checks that the
    /// engine runs with the same ones).
    @Test("the help shows the documented defaults")
    func helpShowsDefaults() throws {
        let result = try runProgram(try builtBinary("duplicator"), ["--help"])
        #expect(result.status == 0)
        // The parser wraps long lines: compare with the whitespace folded.
        let help = result.standardOutput.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        for (flag, text, _) in ParserTests.documentedDefaults {
            guard let start = help.range(of: flag + " <") else {
                Issue.record("\(flag) is not in the help")
                continue
            }
            // The entry: after this option's `<value>`, up to the next option's.
            let rest = help[start.upperBound...].drop { $0 != ">" }.dropFirst()
            let entry = rest.prefix { $0 != "<" }
            #expect(entry.contains("(default: \(text))"), "\(flag) should show (default: \(text)): \(entry)")
        }
    }

    @Test("setup errors are explained")
    func setupErrorMessages() {
        var config = Config(listen: try! Endpoint(parsing: ":1", role: .listen), main: endpoint(2), mirrors: [])
        config.poolSlots = 1024
        config.slotSize = 16384
        let noRing = ProxyError.setup(RingError("io_uring_setup", errno: ENOSYS), config: config)
        #expect(noRing.message.contains("no io_uring"))
        let forbidden = ProxyError.setup(RingError("io_uring_setup", errno: EPERM), config: config)
        #expect(forbidden.message.contains("kernel.io_uring_disabled"))
        #expect(forbidden.message.contains("seccomp"))
        let memory = ProxyError.setup(RingError("io_uring_register_buffers", errno: ENOMEM), config: config)
        #expect(memory.message.contains("16777216-byte buffer pool"))
        #expect(memory.message.contains("RLIMIT_MEMLOCK"))
        // A worker's other set-up calls fail as Platform's SystemCallError, explained alike.
        let table = ProxyError.setup(SystemCallError(operation: "mmap of 4096 bytes for 4 sessions", errorNumber: ENOMEM),
                                     config: config)
        #expect(table.message.contains("not enough locked memory (mmap of 4096 bytes for 4 sessions failed)"))
        let epoll = ProxyError.setup(SystemCallError(operation: "epoll_create1", errorNumber: EMFILE), config: config)
        #expect(epoll.message == "cannot start a worker: epoll_create1: \(String(cString: strerror(EMFILE))) (EMFILE)")
        #expect(SystemCallError.describe(errorNumber: EPIPE) == RingError.describe(errno: EPIPE))
    }
}

/// Promise 8 under real conditions: these need root to arrange (a user to
/// drop to, the sysctl to flip), and are skipped without it.
@Suite("CLI: io_uring forbidden and locked memory, for real", .serialized, .timeLimit(.minutes(6)))
struct CLIPrivilegedTests {
    /// Under CI they run and fail without root or the tools, never skip.
    static var isRoot: Bool { Peers.underCI || (geteuid() == 0 && Peers.runnable("setpriv", "prlimit")) }

    /// Runs the binary as `nobody`, without capabilities, with `prefix` before it (e.g. prlimit).
    /// From a copy in a directory anyone may enter: the build's own may sit
    /// under a private one (a clone in a `mktemp -d` directory, mode 0700).
    /// `shell`, when given, is a `sh -c` script that runs the command as "$@".
    func runAsNobody(_ prefix: [String], _ arguments: [String], shell: String? = nil) throws -> ProcessResult {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("duplicator-nobody-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(at: directory) }
        let binary = directory.appendingPathComponent("duplicator").path
        try? FileManager.default.removeItem(atPath: binary)
        try Self.copyClosingOnExec(try builtBinary("duplicator"), to: binary)
        let command = [try Peers.require("setpriv"),
                       "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
            + prefix + [binary] + arguments
        guard let shell else { return try runProgram(command[0], Array(command.dropFirst())) }
        return try runProgram("/bin/sh", ["-c", shell, "sh"] + command)
    }

    /// A copy written through a descriptor opened with O_CLOEXEC: a process
    /// another test spawns meanwhile must not inherit it open for writing,
    /// or running the copy fails with ETXTBSY for as long as that process
    /// lives (seen once in a parallel run with FileManager's copy).
    static func copyClosingOnExec(_ source: String, to destination: String) throws {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: source))
        let fd = open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        guard fd >= 0 else { throw TestFailure("open \(destination): errno \(errno)") }
        defer { close(fd) }
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
                guard written > 0 else { throw TestFailure("write \(destination): errno \(errno)") }
                offset += written
            }
        }
        guard fchmod(fd, 0o755) == 0 else { throw TestFailure("fchmod \(destination): errno \(errno)") }
    }

    /// The pools grow with the load; a limit below their bound is refused at
    /// start, not found under load.
    @Test("too little locked memory for the buffers names the bytes needed (--backend io_uring), or runs on epoll (auto)",
          .enabled(if: isRoot, "needs root to drop to nobody"))
    func lockedMemoryTooLow() throws {
        // 4 MiB: enough for the rings and the pool's first segment, not for its 64 MiB bound.
        for extra in [[], ["--check"]] {
            let result = try runAsNobody([try Peers.require("prlimit"), "--memlock=4194304:4194304"],
                                         ["-l", "127.0.0.1:0", "-f", ":9", "--max-memory", "64MiB", "--threads", "1",
                                          "--backend", "io_uring"] + extra)
            #expect(result.status != 0)
            #expect(result.errorLines.count == 1, "stderr: \(result.standardError)")
            #expect(result.standardError.contains("not enough locked memory: 1 worker needs up to"), "stderr: \(result.standardError)")
            #expect(result.standardError.contains("buffer pools of \(64 << 20) bytes"), "stderr: \(result.standardError)")
            #expect(result.standardError.contains("RLIMIT_MEMLOCK is 4194304 bytes"), "stderr: \(result.standardError)")
        }
        // Below even the rings and the first segment, the setup itself fails, and says the same.
        let tiny = try runAsNobody([try Peers.require("prlimit"), "--memlock=65536:65536"],
                                   ["-l", "127.0.0.1:0", "-f", ":9", "--max-memory", "4MiB", "--threads", "1", "--backend", "io_uring"])
        #expect(tiny.status != 0 && tiny.errorLines.count == 1, "stderr: \(tiny.standardError)")
        #expect(tiny.standardError.contains("not enough locked memory"), "stderr: \(tiny.standardError)")
        #expect(tiny.standardError.contains("RLIMIT_MEMLOCK is 65536 bytes"), "stderr: \(tiny.standardError)")
        // --backend auto (the default) runs on epoll instead, whose pool is not locked, and says why.
        let auto = try runAsNobody([try Peers.require("prlimit"), "--memlock=4194304:4194304"],
                                   ["-l", "127.0.0.1:0", "-f", ":9", "--max-memory", "64MiB", "--threads", "1", "--check"])
        #expect(auto.status == 0, "stderr: \(auto.standardError)")
        #expect(auto.standardOutput.contains("backend: epoll (io_uring cannot be used here: not enough locked memory: 1 worker needs up to"),
                "stdout: \(auto.standardOutput)")
    }

    @Test("kernel.io_uring_disabled gives a clear line with --backend io_uring; auto runs on epoll and says why",
          .enabled(if: Peers.underCI || (isRoot && FileManager.default.isWritableFile(atPath: "/proc/sys/kernel/io_uring_disabled")),
                   "needs root and a kernel with kernel.io_uring_disabled"))
    func ioUringDisabled() throws {
        // 1: only privileged processes may create rings; root tests running
        // beside this one are unaffected, the unprivileged run is refused.
        // The host's setting is flipped and restored by a shell of its own,
        // on any exit of that shell, so that a test run killed meanwhile
        // cannot leave io_uring off; the proxy exits at once either way.
        let script = """
            setting=/proc/sys/kernel/io_uring_disabled
            original=$(cat "$setting")
            trap 'echo "$original" > "$setting"' EXIT
            trap 'exit 1' HUP INT TERM
            echo 1 > "$setting"
            "$@" --backend io_uring && exit 3
            "$@" --check
            """
        let result = try runAsNobody([try Peers.require("timeout"), "10"], ["-l", "127.0.0.1:0", "-f", ":9"], shell: script)
        #expect(result.status == 0, "stderr: \(result.standardError)")
        // One line from the refusal, one from auto's fallback.
        #expect(result.errorLines.count == 2, "stderr: \(result.standardError)")
        #expect(result.errorLines.first?.hasPrefix("duplicator: io_uring is forbidden") == true, "stderr: \(result.standardError)")
        #expect(result.errorLines.last?.contains("running on epoll (--backend auto): io_uring is forbidden") == true,
                "stderr: \(result.standardError)")
        #expect(result.standardOutput.contains("backend: epoll (io_uring cannot be used here: io_uring is forbidden"),
                "stdout: \(result.standardOutput)")
    }
}

/// Fuzzing the command line: random flag and value sequences (seeded) never
/// trap. Every run has `--check`, so a valid one exits at once; addresses are
/// loopback or malformed, so nothing is resolved beyond this host.
@Suite("CLI: random command lines", .timeLimit(.minutes(6)))
struct CLIFuzzTests {
    static let flags = ["-l", "-f", "-m", "-t", "--listen", "--forward", "--mirror", "--timeout", "--backlog",
                        "--backlog-chunks", "--slot-size", "--max-memory", "--idle-timeout", "--threads", "--max-sessions",
                        "--mirror-linger", "--mirror-discard-batch", "--mirror-drain-batch", "--mirror-batch-bytes", "--mirror-batch-delay", "--drain-timeout", "--main-connect-timeout", "--stats-interval",
                        "--metrics", "--log-level", "--check", "-h", "--bogus", "-", "--", "demo", "--compare",
                        "--compare-window"]
    static let values = ["127.0.0.1:0", "[::1]:0", "127.0.0.1:9", ":9", ":0", "[::1", "1.2.3.4.5:6", "host", "::1:80",
                         "127.0.0.1:65536", "127.0.0.1:-1", "", " ", "500ms", "2s", "0", "-1", "1m30s", "1.5.5s", "5",
                         "99999999999999999999", "4MiB", "16k", "12q", "1024", "4096", "3", "debug", "LOUD",
                         "127.0.0.1:9,127.0.0.1:10", ",", "127.0.0.1:9@10%", ":9@", ":9@0%", ":9@100%",
                         ":9@101%", ":9@0.5%", "127.0.0.1:9@50%,127.0.0.1:10", ":9@@5%", ":9@-5%", "@", "@%", "\u{1F600}", "%n%n%n", String(repeating: "9", count: 300)]

    @Test("random command lines exit cleanly with at most one error line", arguments: 0..<4)
    func randomCommandLines(shard: Int) throws {
        let binary = try builtBinary("duplicator")
        var generator = SeededGenerator(seed: UInt64(4242 + shard))
        for _ in 0..<15 {
            var arguments: [String] = []
            for _ in 0..<Int.random(in: 0...8, using: &generator) {
                arguments.append(Self.flags.randomElement(using: &generator)!)
                if Bool.random(using: &generator) { arguments.append(Self.values.randomElement(using: &generator)!) }
            }
            if !arguments.contains("-h") { arguments.append("--check") }
            let result = try runProgram(binary, arguments, timeoutSeconds: 10)
            let description = "duplicator \(arguments): status \(result.status), stderr \(result.standardError)"
            #expect([0, 1, 64].contains(result.status), "\(description)")
            #expect(result.errorLines.count <= 1, "\(description)")
            #expect(!result.standardError.contains("Fatal error") && !result.standardError.contains("Backtrac"), "\(description)")
        }
    }
}
