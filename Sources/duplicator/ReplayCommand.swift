import ArgumentParser
import Duplicator
import Glibc
import Platform
import Replay

/// `duplicator replay PATH... --target ADDR`: recorded sessions (our
/// `--record-dir` files, or any tcpdump/Wireshark capture) sent again to a
/// target, turn by turn, optionally compared with the recorded replies.
/// Only parses and wires: the work is in the Replay module.
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay recorded TCP sessions (pcap or pcapng) against a target, turn by turn.",
        discussion: """
            Each TCP session of the captures is reassembled (out-of-order segments, retransmits and duplicates \
            handled; sessions whose handshake, bytes or payloads the capture lacks are skipped and counted) and \
            its client bytes are sent to the target one turn at a time: a turn goes once the target has answered \
            the previous one as much as the recording did, or --turn-timeout passed. See docs/replay.md.
            """
    )

    @Argument(help: "Capture files: pcap or pcapng (duplicator --record-dir, tcpdump -w, Wireshark).")
    var paths: [String] = []

    @Option(name: .customLong("target"), help: "Where to replay the sessions: host:port.")
    var target: String

    @Option(name: .customLong("speed"), help: "1: the recorded gaps between session starts; N: N times faster; max: as fast as the target takes them.")
    var speed: String = "1"

    @Option(name: .customLong("connections"), help: "Sessions at once, at most.")
    var connections: Int = 256

    @Flag(name: .customLong("compare"), help: "Compare the target's replies with the recorded ones: match, diverged (at which offset), shorter, longer or incomplete per session.")
    var compareFlag = false

    @Option(name: .customLong("dump-dir"), help: "With --compare: write a pcapng file (mode 0600) for each session whose replies differ: the recorded conversation and the target's.")
    var dumpDirectoryOption: String?

    @Flag(name: .customLong("json"), help: "Print the summary as one JSON object.")
    var json = false

    @Option(name: .customLong("server-port"), help: "Only sessions to this port; its end is the server's.")
    var serverPort: UInt16?

    @Option(name: .customLong("turn-timeout"), parsing: .unconditional, help: "How long a turn waits for the target's reply before the next is sent anyway, Go-style.")
    var turnTimeout: String = "1s"

    @Option(name: .customLong("backend"), help: "IO backend: auto (io_uring where it is allowed, else epoll, saying why), io_uring or epoll.")
    var backendOption: String = "auto"

    /// The proxy's options belong to the root command, which takes a
    /// `--compare`, `--dump-dir` or `--backend` given after `replay` as its
    /// own (as with `demo`): read them from there too.
    @ParentCommand var parent: DuplicatorCommand

    private var compare: Bool { compareFlag || parent.options.verdicts.compare }
    private var dumpDirectory: String? { dumpDirectoryOption ?? parent.options.verdicts.dumpDir }
    private var backend: String { backendOption != "auto" ? backendOption : parent.options.backend.rawValue }

    func run() throws {
        Signals.ignoreBrokenPipe()
        guard !paths.isEmpty else { throw ValidationError("replay: give at least one capture file") }
        let endpoint: Endpoint
        let address: SocketAddress
        do {
            endpoint = try Endpoint(parsing: target, role: .connect)
            address = try endpoint.resolve(role: .connect)
        } catch {
            throw ValidationError("--target: \(error.message)")
        }
        var options = ReplayOptions(target: address)
        switch speed {
        case "max": options.speed = .max
        default:
            guard let factor = Double(speed), factor > 0, factor.isFinite else {
                throw ValidationError("--speed '\(speed)': expected a number above 0 or max")
            }
            options.speed = .scaled(factor)
        }
        guard (1...65_536).contains(connections) else { throw ValidationError("--connections must be from 1 to 65536, got \(connections)") }
        options.connectionsMax = connections
        if turnTimeout.hasPrefix("-") { throw ValidationError("--turn-timeout '\(turnTimeout)': negative durations are refused") }
        do { options.turnTimeoutMs = try DurationParser.milliseconds(turnTimeout) } catch {
            throw ValidationError("--turn-timeout: \(error.message)")
        }
        guard options.turnTimeoutMs > 0 else { throw ValidationError("--turn-timeout must be more than 0") }
        options.compare = compare
        if dumpDirectory != nil && !compare { throw ValidationError("--dump-dir needs --compare") }
        guard let backendChoice = Replayer.Backend(rawValue: backend) else {
            throw ValidationError("--backend '\(backend)': expected auto, io_uring or epoll")
        }
        var run = Replayer.Run(paths: paths, options: options)
        run.serverPort = serverPort
        run.backend = backendChoice
        run.dumpDirectory = dumpDirectory
        run.note = { printError($0) }
        run.progressEnabled = !json
        let report: ReplayReport
        do { report = try Replayer.run(run) } catch { throw ReplayFailure(error.message) }
        print(json ? report.json : report.summary)
    }
}

/// A replay that could not run: its one line, exit status 1.
struct ReplayFailure: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
