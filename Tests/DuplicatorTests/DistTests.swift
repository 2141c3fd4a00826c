import Foundation
import Glibc
import Testing
@testable import Duplicator

/// `make dist` and `make install`, from outside: the tarball's layout, the
/// binaries' links (nothing beyond the C and C++ runtime), the binary run
/// from an empty environment, and man pages and completions that match the
/// code. `make test` builds the tarball first, so here `make dist` only
/// checks it is current (seconds); run alone, this test builds it (the
/// static release build took 64 to 88 s from scratch on this 2-core machine).
@Suite("make dist and make install", .serialized, .timeLimit(.minutes(20)))
struct DistTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let programs = ["duplicator", "duplicator-testserver", "duplicator-testclient"]
    /// What every Linux distribution ships; anything else would have to be installed beside the binary.
    static let allowedLibraries = ["linux-vdso.so", "libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "ld-linux"]

    static var architecture: String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    static func make(_ arguments: [String]) throws -> ProcessResult {
        try runProgram("/usr/bin/env", ["make", "-C", root] + arguments, timeoutSeconds: 15 * 60)
    }

    /// Runs `make dist` and unpacks the tarball into a fresh folder; returns that folder's top.
    static func unpackedDist() throws -> (tarball: String, top: String, scratch: String) {
        let result = try make(["dist"])
        guard result.status == 0 else {
            throw TestFailure("make dist failed: \(result.standardError.suffix(2000)) \(result.standardOutput.suffix(2000))")
        }
        let name = "duplicator-\(BuildInfo.version)-linux-\(architecture)"
        let tarball = root + "/dist/\(name).tar.gz"
        guard result.standardOutput.contains("dist/\(name).tar.gz"), FileManager.default.fileExists(atPath: tarball) else {
            throw TestFailure("make dist did not say or make dist/\(name).tar.gz: \(result.standardOutput.suffix(500))")
        }
        let scratch = try RealPeerTests.temporaryDirectory()
        let untar = try runProgram("/usr/bin/env", ["tar", "-C", scratch, "-xzf", tarball])
        guard untar.status == 0 else { throw TestFailure("tar: \(untar.standardError)") }
        return (tarball, scratch + "/" + name, scratch)
    }

    static func expectLayout(_ top: String, docDirectory: String, sourceLocation: SourceLocation = #_sourceLocation) {
        var paths: [String] = []
        for program in programs {
            paths += ["bin/\(program)", "share/man/man1/\(program).1", "share/bash-completion/completions/\(program)",
                      "share/zsh/site-functions/_\(program)", "share/fish/vendor_completions.d/\(program).fish"]
        }
        // The documentation, laid out as in the repository so that the README's links work.
        paths += ["LICENSE", "README.md", "BENCHMARKS.md", "RELIABILITY.md", "docs/operations.md", "docs/verdicts.md",
                  "docs/architecture.md", "docs/contributing.md", "docs/flags.md"].map { docDirectory + $0 }
        for path in paths {
            #expect(FileManager.default.fileExists(atPath: top + "/" + path), "\(path) missing under \(top)",
                    sourceLocation: sourceLocation)
        }
        for program in programs {
            #expect(FileManager.default.isExecutableFile(atPath: top + "/bin/" + program), sourceLocation: sourceLocation)
        }
    }

    @Test("the tarball: its name, layout, static links, and the binary run from an empty environment")
    func tarball() throws {
        let (_, top, scratch) = try Self.unpackedDist()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        Self.expectLayout(top, docDirectory: "")

        for program in Self.programs {
            let ldd = try runProgram("/usr/bin/env", ["ldd", top + "/bin/" + program])
            #expect(ldd.status == 0, "\(program): \(ldd.standardError)")
            for line in ldd.standardOutput.split(separator: "\n") {
                let library = line.trimmingCharacters(in: .whitespaces)
                #expect(Self.allowedLibraries.contains { library.contains($0) }, "\(program) links \(library)")
            }
            #expect(!ldd.standardOutput.contains("swift") && !ldd.standardOutput.contains("uring")
                    && !ldd.standardOutput.contains("libssl") && !ldd.standardOutput.contains("libcrypto"), "\(program): \(ldd.standardOutput)")
            let help = try runProgram("/usr/bin/env", ["-i", top + "/bin/" + program, "--help"])
            #expect(help.status == 0 && help.standardOutput.contains("USAGE"), "\(program) --help: \(help.standardError)")
        }
        let version = try runProgram("/usr/bin/env", ["-i", top + "/bin/duplicator", "--version"])
        #expect(version.status == 0 && version.standardOutput == BuildInfo.version + "\n", "\(version.standardError)")

        // The proxy itself, from an empty environment: bytes go through to an echo main.
        let main = try startServer(.echo)
        defer { main.stop() }
        let port = freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["-i", top + "/bin/duplicator", "-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)",
                             "--threads", "1", "--max-memory", "16MiB", "--send-proxy", "v1"]
        process.standardOutput = FileHandle.nullDevice
        let errorPipe = Pipe()
        process.standardError = errorPipe
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        let up = eventually(timeoutSeconds: 10) { (try? TestConnection(port: port, timeoutSeconds: 1)) != nil }
        try #require(up, "the dist binary did not listen: \(String(decoding: errorPipe.fileHandleForReading.availableData, as: UTF8.self))")
        let client = try LoopbackClient(host: "127.0.0.1", port: port)
        client.send(Array("ping\n".utf8))
        shutdown(client.fd, Int32(SHUT_WR))
        let echoed = String(decoding: client.readToEnd().bytes, as: UTF8.self)
        #expect(echoed == "PROXY TCP4 127.0.0.1 127.0.0.1 \(client.localPort) \(port)\r\nping\n")
        kill(process.processIdentifier, SIGTERM)
        #expect(eventually(timeoutSeconds: 10) { !process.isRunning })
    }

    @Test("man pages and completions come from the argument parser: the options of this very build")
    func manPagesAndCompletions() throws {
        let (_, top, scratch) = try Self.unpackedDist()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let read = { (path: String) in (try? String(contentsOfFile: top + "/" + path, encoding: .utf8)) ?? "" }
        let page = read("share/man/man1/duplicator.1")
        #expect(page.hasPrefix(".TH \"DUPLICATOR\" \"1\""))
        for flag in ["listen", "forward", "mirror", "send\\-proxy", "accept\\-proxy", "proxy\\-header\\-timeout", "max\\-memory"] {
            #expect(page.contains("\\fB\\-\\-\(flag)\\fR"), "--\(flag) missing from the man page")
        }
        #expect(page.contains("COMMAND: DEMO") && page.contains(BuildInfo.version))
        // Not drifting: the page of the binary under test is the page in the tarball.
        let current = try runProgram("/usr/bin/env", ["python3", Self.root + "/scripts/manpage.py",
                                                      try builtBinary("duplicator"), BuildInfo.version])
        #expect(current.status == 0, "\(current.standardError)")
        #expect(current.standardOutput == page, "the tarball's man page differs from this build's")
        #expect(read("share/man/man1/duplicator-testclient.1").contains("\\fB\\-\\-connections\\fR"))

        #expect(read("share/bash-completion/completions/duplicator").contains("--send-proxy"))
        #expect(read("share/zsh/site-functions/_duplicator").hasPrefix("#compdef duplicator"))
        #expect(read("share/zsh/site-functions/_duplicator").contains("--accept-proxy"))
        #expect(read("share/fish/vendor_completions.d/duplicator.fish").contains("send-proxy"))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/bash") {
            let sourced = try runProgram("/usr/bin/bash", ["-c", "source \(top)/share/bash-completion/completions/duplicator"])
            #expect(sourced.status == 0, "bash completion: \(sourced.standardError)")
        }
    }

    @Test("make install PREFIX=... DESTDIR=... installs the same layout")
    func install() throws {
        let destination = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: destination) }
        let result = try Self.make(["install", "DESTDIR=\(destination)", "PREFIX=/usr/local"])
        #expect(result.status == 0, "make install: \(result.standardError.suffix(2000))")
        Self.expectLayout(destination + "/usr/local", docDirectory: "share/doc/duplicator/")
        let version = try runProgram("/usr/bin/env", ["-i", destination + "/usr/local/bin/duplicator", "--version"])
        #expect(version.standardOutput == BuildInfo.version + "\n")
    }
}
