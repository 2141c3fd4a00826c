import ArgumentParser
import Duplicator

/// `duplicator manual-sections` (hidden): the man page's sections that are
/// not options, as JSON for scripts/manpage.py, from the code that decides
/// them: the signals `serve` handles, the exit statuses `main` gives, the
/// files the proxy writes, and the metric families /metrics serves.
struct ManualSectionsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manual-sections",
        abstract: "Print the man page's SIGNALS, EXIT STATUS, FILES and METRICS sections as JSON.",
        shouldDisplay: false
    )

    func run() throws {
        // JSON by hand: Foundation would be linked into the binary for this alone.
        func string(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case _ where scalar.value < 0x20: out += "\\u00" + String(scalar.value, radix: 16).leftPadded(2)
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        }
        let sections = ManualSections.all.map { section in
            let entries = section.entries.map { "{\"term\": \(string($0.term)), \"text\": \(string($0.text))}" }
            return "{\"title\": \(string(section.title)), \"entries\": [\(entries.joined(separator: ", "))]}"
        }
        print("{\"sections\": [\(sections.joined(separator: ",\n"))]}")
    }
}

private extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

enum ManualSections {
    struct Section {
        let title: String
        let entries: [(term: String, text: String)]
    }

    /// What SIGHUP does: the one place that says it (`serve` and --config
    /// are where it happens).
    static let hangUp = "With --config, reads the file again and applies it to new sessions; live sessions keep the "
        + "configuration they started with, and a bad file changes nothing (one log line says why). Without --config, logged and ignored."

    static let signals = Section(title: "SIGNALS", entries: [
        ("SIGINT, SIGTERM", "Stop accepting, and let live sessions finish for up to --drain-timeout; then close the rest "
            + "and exit 0. A second SIGINT or SIGTERM closes every session at once."),
        ("SIGUSR1", "Log the --stats-interval line now (rates since the previous line), whether or not --stats-interval is set."),
        ("SIGHUP", hangUp),
        ("SIGPIPE", "Ignored: a client, server or log reader that went away is an error on that descriptor alone."),
    ])

    static let exitStatus = Section(title: "EXIT STATUS", entries: [
        ("0", "Stopped by SIGINT or SIGTERM; --check found the configuration good; --help or --version."),
        ("1", "The proxy could not start: a port in use; an operator mistake refused at start (-f or -m equal to -l, "
            + "a mirror that is main or given twice, --metrics on the address of -l, -f or a mirror); io_uring refused "
            + "with --backend io_uring; too little locked memory; a dump directory that cannot be written. Or demo failed. "
            + "One line on standard error says why."),
        ("\(ExitCode.validationFailure.rawValue)", "A bad command line: an unknown or repeated option, a malformed address, "
            + "duration or size, or a value out of its range; one line on standard error says which."),
    ])

    static let files = Section(title: "FILES", entries: [
        ("DIR/dump-PID-N-MIRROR-VERDICT.pcapng", "With --compare --dump-dir DIR: one pcapng file per session and mirror whose "
            + "replies diverged, were shorter or longer; mode 0600 (production data), never over an existing file."),
        ("/proc/self/status", "Read at start for CAP_IPC_LOCK, which lifts the locked-memory limit (RLIMIT_MEMLOCK) the registered buffers are checked against."),
    ])

    static var metrics: Section {
        Section(title: "METRICS", entries: [("", "Served by --metrics ADDR at http://ADDR/metrics in the Prometheus text format; "
            + "per-mirror families carry a mirror label.")]
            + PrometheusText.families().map { ($0.name + " (" + $0.type + ")", $0.help) })
    }

    static var all: [Section] { [signals, exitStatus, files, metrics] }
}
