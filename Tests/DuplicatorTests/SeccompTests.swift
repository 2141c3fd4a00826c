import Foundation
import Glibc
import Testing
import TestSupport
@testable import Duplicator
import LoadTools

/// A seccomp filter as Docker's (Engine 25+) and containerd's default
/// profiles have it for io_uring: `io_uring_setup`, `io_uring_enter` and
/// `io_uring_register` fail with EPERM, everything else is allowed. Loaded
/// by Debian's python3-seccomp, which then execs the program.
enum IOUringDeniedLauncher {
    static let script = """
        import errno, os, sys, seccomp
        denied = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
            denied.add_rule(seccomp.ERRNO(errno.EPERM), name)
        denied.load()
        os.execv(sys.argv[1], sys.argv[1:])
        """

    /// A python3 that has the seccomp module (Debian's /usr/bin/python3 with
    /// python3-seccomp; a python3 of one's own on PATH may lack it), or nil.
    static let python: String? = {
        let candidates = ["/usr/bin/python3"] + [Peers.path("python3")].compactMap { $0 }
        return candidates.first { path in
            FileManager.default.isExecutableFile(atPath: path)
                && (try? runProgram(path, ["-c", "import seccomp"]))?.status == 0
        }
    }()

    /// The program and arguments to put before the command.
    static func launcher() throws -> [String] {
        guard let python else { throw TestFailure("python3-seccomp is not installed (.ci/run installs it)") }
        return [python, "-c", script]
    }
}

/// Promise 8 in a container: where io_uring is forbidden, `--backend auto`
/// runs on epoll, says why in one line, and keeps the promises;
/// `--backend io_uring` refuses to start instead.
@Suite("Containers: io_uring denied by seccomp", .timeLimit(.minutes(6)),
       .enabled(if: Peers.underCI || IOUringDeniedLauncher.python != nil, "needs python3-seccomp"))
struct SeccompTests {
    @Test("--backend auto falls back to epoll with one line naming the reason, and serves exact streams to main and a mirror")
    func autoFallsBack() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let proxy = try ProxyProcess(["-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(mirror.boundPort)",
                                      "--threads", "2"],
                                     port: freePort(), launcher: try IOUringDeniedLauncher.launcher())
        var generator = SeededGenerator(seed: 15)
        let payloads = (0..<8).map { index in generator.bytes(1000 + index * 150_000) }
        for (index, payload) in payloads.enumerated() {
            let connection = try TestConnection(port: proxy.port)
            let (received, end) = connection.exchange(payload, seed: UInt64(index))
            #expect(end == .eof && received == payload, "session \(index): \(received.count)/\(payload.count) bytes back")
        }
        // ProxyProcess's own probe that the port listens is an empty session.
        let expected = streamSignatures(payloads + [[]])
        #expect(receivedStreams(main, count: payloads.count + 1) == expected)
        #expect(receivedStreams(mirror, count: payloads.count + 1) == expected)
        #expect(proxy.signalAndWait(SIGTERM) == 0)
        let lines = proxy.standardError.split(separator: "\n")
        let fallback = lines.filter { $0.contains("running on epoll") }
        #expect(fallback.count == 1, "\(lines.joined(separator: "\n"))")
        #expect(fallback.first?.contains("io_uring is forbidden here (io_uring_setup: Operation not permitted (EPERM))") == true)
        #expect(lines.contains { $0.contains("listening on") && $0.contains(", on epoll") })
    }

    @Test("--backend io_uring refuses to start with the clear line and a non-zero exit; --check says which backend auto takes")
    func ioUringRefused() throws {
        let binary = try builtBinary("duplicator")
        let launcher = try IOUringDeniedLauncher.launcher()
        let arguments = ["-l", "127.0.0.1:0", "-f", "127.0.0.1:\(freePort())"]
        let refused = try runProgram(launcher[0], Array(launcher.dropFirst()) + [binary] + arguments + ["--backend", "io_uring"])
        #expect(refused.status != 0)
        #expect(refused.errorLines.count == 1, "\(refused.standardError)")
        #expect(refused.standardError.hasPrefix("duplicator: io_uring is forbidden here (io_uring_setup: Operation not permitted (EPERM))"),
                "\(refused.standardError)")
        let check = try runProgram(launcher[0], Array(launcher.dropFirst()) + [binary] + arguments + ["--check"])
        #expect(check.status == 0, "\(check.standardError)")
        #expect(check.standardOutput.contains("backend: epoll (io_uring cannot be used here: io_uring is forbidden here"),
                "\(check.standardOutput)")
        // Where io_uring is allowed, --check says it runs on io_uring (and epoll when asked).
        let allowed = try runProgram(binary, arguments + ["--check"])
        #expect(allowed.standardOutput.contains("backend: io_uring ("), "\(allowed.standardOutput)")
        let epoll = try runProgram(binary, arguments + ["--check", "--backend", "epoll"])
        #expect(epoll.standardOutput.contains("backend: epoll (--backend epoll)"), "\(epoll.standardOutput)")
    }
}
