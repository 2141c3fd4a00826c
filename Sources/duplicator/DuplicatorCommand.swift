import ArgumentParser
import Duplicator
import Glibc

@main
struct DuplicatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "duplicator",
        abstract: "A TCP traffic-mirroring proxy on io_uring: a drop-in for goduplicator.",
        usage: """
            duplicator -l <address> -f <address> [-m <address>[,<address>...]]... [<options>]
            duplicator demo [<options>]
            duplicator replay <capture>... --target <address> [<options>]
            """,
        discussion: ProxyOptions.discussion,
        version: BuildInfo.version,
        subcommands: [DemoCommand.self, ReplayCommand.self, ManualSectionsCommand.self]
    )

    // The proxy is the command itself, not a default subcommand, so that
    // `duplicator --help` (and the man page) shows its options.
    @OptionGroup var options: ProxyOptions

    func run() throws { try options.runProxy() }

    /// Errors are one line on stderr and a non-zero exit; help and version print as usual.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is CleanExit {
                exit(withError: error)
            }
            printError(ArgumentRefusals.line(for: error, of: self))
            Glibc.exit(code.rawValue == 0 ? 1 : code.rawValue)
        }
    }
}

/// One line on stderr, prefixed with the program's name.
func printError(_ message: String) {
    let line = Array("duplicator: \(message)\n".utf8)
    line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}
