import ArgumentParser
import Duplicator
import Glibc
import LoadTools
import Logging

/// `duplicator demo`: the whole product in one process, on loopback, with
/// nothing else running: an echo main, echo mirrors, the proxy, and the
/// seed's closed-loop client; then a summary, and whether each mirror got
/// exactly what main got.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run an echo main, mirrors, the proxy and a load client on loopback, then summarise."
    )

    // The proxy's option types: a Go-style duration and a size with the
    // proxy's suffixes; .unconditional so that `-d -1s` reaches the type
    // and is refused by name instead of "Missing value".
    @Option(name: [.customShort("d"), .customLong("duration")], parsing: .unconditional, help: "How long the load runs, Go-style (3s).")
    var duration = Milliseconds(3_000)

    @Option(name: [.customShort("p"), .customLong("connections")], help: "Client connections.")
    var connections: Int = 10

    @Option(name: [.customShort("s"), .customLong("size")], parsing: .unconditional, help: "Bytes per message (the last is a newline), e.g. 1024, 16KiB, 1M.")
    var size = ByteSize(1_024)

    @Option(name: .customLong("mirrors"), help: "Echo mirrors to copy the traffic to.")
    var mirrors: Int = 1

    @Flag(name: .customLong("compare"), help: "Compare each mirror's replies with main's and show the verdicts (echo mirrors: every session should match).")
    var compareFlag = false

    /// The proxy's own options belong to the root command, which takes a
    /// `--compare` given after `demo` as its own: read it from there too.
    @ParentCommand var parent: DuplicatorCommand

    private var compare: Bool { compareFlag || parent.options.verdicts.compare }

    func run() throws {
        // As in `run`: a line written to a pipe whose reader is gone fails; it does not kill.
        Signals.ignoreBrokenPipe()
        let seconds = Double(duration.milliseconds) / 1000
        guard seconds > 0 else { throw ValidationError("--duration must be more than 0") }
        guard (0...8).contains(mirrors) else { throw ValidationError("--mirrors must be from 0 to 8") }
        guard (1...DemoFailure.connectionsMax).contains(connections) else {
            throw ValidationError("--connections must be from 1 to \(DemoFailure.connectionsMax), got \(connections)")
        }
        let size = self.size.bytes
        guard (1...DemoFailure.sizeBytesMax).contains(size) else {
            throw ValidationError("--size must be from 1 byte to \(SizeParser.text(DemoFailure.sizeBytesMax)), got \(self.size.defaultValueDescription)")
        }
        do {
            try runDemo(seconds: seconds, size: size)
        } catch let error as DemoFailure {
            throw error
        } catch {
            // A server, the proxy or the client could not start: one line that says which and why.
            throw DemoFailure("demo failed: \(error)")
        }
    }

    private func runDemo(seconds: Double, size: Int) throws {

        let loopback = LoadAddress(host: "127.0.0.1", port: 0)
        let main = TestServer(address: loopback, mode: .echo)
        let mirrorServers = (0..<mirrors).map { _ in TestServer(address: loopback, mode: .echo) }
        try main.start()
        defer { main.stop() }
        for server in mirrorServers { try server.start() }
        defer { mirrorServers.forEach { $0.stop() } }

        var config = Config(listen: try endpoint("127.0.0.1:0", .listen),
                            main: try endpoint("127.0.0.1:\(main.boundPort)", .connect),
                            mirrors: try mirrorServers.map { try endpoint("127.0.0.1:\($0.boundPort)", .connect) })
        config.compare = compare
        DuplicatorLogHandler.bootstrap(level: .warning)
        var logger = Logger(label: "duplicator")
        logger.logLevel = .warning
        let proxy = try Proxy(config: config, logger: logger)
        try proxy.start()
        let proxyPort = proxy.listenAddress.port
        print("demo: echo main on :\(main.boundPort), \(mirrors) echo mirror(s) on "
            + mirrorServers.map { ":\($0.boundPort)" }.joined(separator: " ")
            + ", proxy on :\(proxyPort); \(connections) connections x \(size) bytes for \(duration.defaultValueDescription)")

        let client = try LoadClient(address: LoadAddress(host: "127.0.0.1", port: proxyPort), connections: connections,
                                    messageSizeBytes: size, durationSeconds: seconds)
        let result = try client.run { progress in
            print("\(Int(progress.requestsPerSecond.rounded())) req/sec")
        }
        // Let every session end (client EOF travels to main and mirrors) before comparing.
        proxy.stop()
        proxy.wait()

        print("")
        print(result.summary)
        let snapshot = proxy.snapshot()
        let mainStreams = settledStreams(main)
        let mainBytes = mainStreams.reduce(0) { $0 + $1.bytes }
        print("main: \(mainBytes) bytes in \(mainStreams.count) sessions")
        var allExact = result.errors == 0 && result.requests > 0
        for (index, server) in mirrorServers.enumerated() {
            let streams = settledStreams(server)
            let exact = streams == mainStreams
            allExact = allExact && exact
            let bytes = streams.reduce(0) { $0 + $1.bytes }
            let stats = proxy.stats.map { $0.mirrors[index] }
            let cut = stats.reduce(0) { $0 + $1.sessionsCutForLag.value + $1.sessionsCutForPoolShare.value }
            print("mirror \(index + 1): \(bytes) bytes in \(streams.count) sessions, "
                + (exact ? "exactly what main got" : "DIFFERS from main") + (cut > 0 ? " (\(cut) sessions cut for lag)" : ""))
            if compare {
                let mirror = snapshot.mirrors[index]
                let verdicts = ReplyComparison.Verdict.allCases.map { "\(mirror.compared($0)) \($0.label)" }
                print("mirror \(index + 1) replies compared with main's, per session: " + verdicts.joined(separator: ", "))
            }
        }
        guard allExact else { throw DemoFailure.explaining(result, connections: connections) }
    }

    private func endpoint(_ text: String, _ role: Endpoint.Role) throws -> Endpoint {
        do { return try Endpoint(parsing: text, role: role) } catch { throw ValidationError(error.message) }
    }

    /// Each connection's (bytes, digest), sorted, once the server saw every connection close.
    private func settledStreams(_ server: TestServer) -> [Stream] {
        for _ in 0..<500 {
            if server.connectionRecords().allSatisfy({ $0.peerClosed }) { break }
            usleep(10_000)
        }
        return server.connectionRecords().map { Stream(bytes: $0.bytesReceived, digest: $0.receivedDigest) }.sorted()
    }

    private struct Stream: Comparable {
        let bytes: UInt64
        let digest: UInt64
        static func < (lhs: Stream, rhs: Stream) -> Bool { (lhs.bytes, lhs.digest) < (rhs.bytes, rhs.digest) }
    }
}
