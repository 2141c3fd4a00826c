import Foundation
import Glibc
import Testing
@testable import Duplicator

/// What an operator sees first, from outside: the built binary's help,
/// version and build-info metric.
@Suite("CLI: help and version", .timeLimit(.minutes(6)))
struct HelpAndVersionTests {
    @Test("duplicator --help shows the proxy's options, examples and the demo")
    func rootHelp() throws {
        for arguments in [["--help"], ["-h"], ["help"]] {
            let result = try runProgram(try builtBinary("duplicator"), arguments)
            #expect(result.status == 0, "\(arguments): \(result.standardError)")
            let help = result.standardOutput
            for expected in ["-l, --listen", "-f, --forward", "-m, --mirror", "--max-memory", "--send-proxy",
                             "--accept-proxy", "--proxy-header-timeout", "--version",
                             "duplicator -l :8080 -f :8081 -m :8082 -m :8083", "demo"] {
                #expect(help.contains(expected), "\(arguments): '\(expected)' missing from\n\(help)")
            }
        }
    }

    @Test("duplicator --help shows the options in titled groups, in order, tuning last before the general ones")
    func helpGroups() throws {
        let result = try runProgram(try builtBinary("duplicator"), ["--help"])
        #expect(result.status == 0)
        let titles = result.standardOutput.split(separator: "\n").filter { !$0.hasPrefix(" ") && $0.hasSuffix(":") }.map(String.init)
        let groups = ["ADDRESSES:", "MIRRORS:", "LIMITS AND TIMEOUTS:", "VERDICTS AND RECORDING:", "OBSERVABILITY:", "TUNING:", "OPTIONS:"]
        // Other groups (TLS, recording) may sit between them; these keep their order, and tuning comes last of the titled.
        let found = titles.filter { groups.contains($0) }
        #expect(found == groups, "\(titles)")
        #expect(titles.firstIndex(of: "TUNING:") == titles.firstIndex(of: "OPTIONS:").map { $0 - 1 }, "\(titles)")
        // goduplicator's four flags are the first options shown.
        let help = result.standardOutput
        let order = ["-l, --listen", "-f, --forward", "-m, --mirror", "-t, --timeout", "--slot-size"].compactMap { help.range(of: $0)?.lowerBound }
        #expect(order.count == 5 && order == order.sorted(), "\(help)")
    }

    @Test("duplicator --version prints BuildInfo.version and exits 0")
    func version() throws {
        let result = try runProgram(try builtBinary("duplicator"), ["--version"])
        #expect(result.status == 0)
        #expect(result.standardOutput == BuildInfo.version + "\n")
        #expect(BuildInfo.version.split(separator: ".").count == 3)
    }

    @Test("the metrics endpoint says the version and the backend: duplicator_build_info{version=...} 1, duplicator_backend{backend=...} 1",
          arguments: Config.Backend.tested)
    func buildInfoMetric(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let metricsPort = freePort()
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "--threads", "1",
                                                        "--metrics", "127.0.0.1:\(metricsPort)"], port: freePort())
        // The listener (and the metrics) are up before the workers start, when the backend is chosen.
        let backendLine = "\nduplicator_backend{backend=\"\(backend.rawValue)\"} 1\n"
        var response: String?
        #expect(eventually(timeoutSeconds: 10) {
            response = scrape(metricsPort, timeoutSeconds: 1)
            return response?.contains(backendLine) == true
        }, "\(response ?? "no response")")
        #expect(response?.contains("\nduplicator_build_info{version=\"\(BuildInfo.version)\"} 1\n") == true,
                "\(response ?? "no response")")
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }
}

/// The quick start's first command, and its `--compare`, as a user runs them.
@Suite("The demo, from outside")
struct DemoTests {
    @Test("duplicator demo --compare: exact mirror streams, and every session's replies match")
    func demoCompares() throws {
        let result = try runProgram(try builtBinary("duplicator"), ["demo", "-d", "1s", "-p", "4", "--compare"],
                                    timeoutSeconds: 60)
        #expect(result.status == 0, "stderr: \(result.standardError)")
        #expect(result.standardOutput.contains("mirror 1: ") && result.standardOutput.contains("exactly what main got"))
        #expect(result.standardOutput.contains("mirror 1 replies compared with main's, per session: 4 match, 0 diverged"),
                "\(result.standardOutput.split(separator: "\n").suffix(3))")
    }
}

/// docs/flags.md's tables of flags against what the binary parses: a row per
/// option `--help` shows, with its default, and no row for an option it does not.
@Suite("docs/flags.md: the flags tables follow the code")
struct FlagsTableTests {
    static let path = DistTests.root + "/docs/flags.md"

    /// The long names a row's first cell gives (`-l`, `--listen` gives "listen").
    static func longNames(_ row: Substring) -> [String] {
        guard let cell = row.split(separator: "|").first else { return [] }
        return cell.split(separator: "`").filter { $0.hasPrefix("--") }.map { String($0.dropFirst(2)) }
    }

    @Test("every option of duplicator --help has a row in docs/flags.md with the default --help shows, and every row an option")
    func everyOptionIsDocumented() throws {
        let dump = try runProgram(try builtBinary("duplicator"), ["--experimental-dump-help"])
        #expect(dump.status == 0)
        struct Name: Decodable { let kind: String; let name: String }
        struct Argument: Decodable { let names: [Name]?; let defaultValue: String?; let shouldDisplay: Bool; let sectionTitle: String? }
        struct Command: Decodable { let arguments: [Argument] }
        struct Dump: Decodable { let command: Command }
        let command = try JSONDecoder().decode(Dump.self, from: Data(dump.standardOutput.utf8)).command
        let page = try String(contentsOfFile: Self.path, encoding: .utf8)
        let rows = page.split(separator: "\n").filter { $0.hasPrefix("| `-") }
        // The page's section of each row: --help's group of its option ("Options" for the untitled one).
        var sectionOfRow: [Substring: String] = [:]
        var section = ""
        for line in page.split(separator: "\n") {
            if line.hasPrefix("## ") { section = String(line.dropFirst(3)) }
            if line.hasPrefix("| `-") { sectionOfRow[line] = section }
        }
        var shown: Set<String> = []
        for argument in command.arguments where argument.shouldDisplay {
            guard let long = argument.names?.first(where: { $0.kind == "long" })?.name,
                  !["help", "version"].contains(long) else { continue }
            shown.insert(long)
            // The row whose first cell names the flag (others may mention it).
            let row = rows.first { Self.longNames($0).contains(long) }
            #expect(row != nil, "--\(long) has no row in docs/flags.md's tables")
            if let row {
                #expect(sectionOfRow[row] == (argument.sectionTitle ?? "Options"),
                        "--\(long) is under '\(argument.sectionTitle ?? "Options")' in --help, '\(sectionOfRow[row] ?? "?")' in docs/flags.md")
            }
            if let row, let value = argument.defaultValue {
                #expect(row.contains("`\(value)`"), "docs/flags.md's row for --\(long) does not say its default \(value): \(row)")
            }
        }
        #expect(shown.count >= 20)
        for row in rows {
            for long in Self.longNames(row) {
                #expect(shown.contains(long), "docs/flags.md has a row for --\(long), which --help does not show: \(row)")
            }
        }
    }
}

@Suite("CLI: --check says what the PROXY protocol flags do")
struct CheckProxyProtocolTests {
    @Test("--check names the PROXY protocol in and out; bad values get one line")
    func check() throws {
        let binary = try builtBinary("duplicator")
        let main = try startServer(.echo)
        defer { main.stop() }
        let base = ["--check", "-l", "127.0.0.1:0", "-f", "127.0.0.1:\(main.boundPort)", "--threads", "1", "--max-memory", "8MiB"]
        let both = try runProgram(binary, base + ["--accept-proxy", "--send-proxy", "v2"])
        #expect(both.status == 0, "\(both.standardError)")
        #expect(both.standardOutput.contains("\nPROXY protocol: a v1 or v2 header expected from every client within 3s\n"),
                "\(both.standardOutput)")
        #expect(both.standardOutput.contains("\nPROXY protocol: a v2 header sent to main and every mirror\n"), "\(both.standardOutput)")
        let plain = try runProgram(binary, base)
        #expect(plain.status == 0 && !plain.standardOutput.contains("PROXY"), "\(plain.standardOutput)")
        for (arguments, expected) in [(["--send-proxy", "v3"], "--send-proxy 'v3': expected v1 or v2"),
                                      (["--send-proxy"], "Missing value for '--send-proxy"),
                                      (["--proxy-header-timeout", "0"], "--proxy-header-timeout 0: shorter than the workers' tick; the smallest is 100ms"),
                                      (["--proxy-header-timeout", "-1s"], "--proxy-header-timeout '-1s': negative durations are refused"),
                                      (["--proxy-header-timeout", "soon"], "--proxy-header-timeout 'soon': expected a number with a unit")] {
            let result = try runProgram(binary, base + arguments)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.errorLines.count == 1 && result.standardError.contains(expected), "\(arguments): \(result.standardError)")
        }
    }
}
