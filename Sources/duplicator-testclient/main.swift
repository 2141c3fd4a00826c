import ArgumentParser
import Glibc
import LoadTools
import Synchronization

struct TestClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "duplicator-testclient",
        abstract: "A closed-loop TCP load client for echo servers and the proxies in front of them.",
        discussion: """
            Each connection sends a message of --size bytes ending in '\\n', waits for the same \
            bytes back (checked byte for byte), records the round trip, and sends the next. \
            Prints "<N> req/sec" once a second, then requests/s, latency percentiles, errors \
            and the client's own CPU time per request.

            A connection that fails (refused, reset, closed, or a wrong reply) counts one \
            error and is not replaced. Exits 1 when no connection could be established. \
            SIGINT or SIGTERM ends the run early with a summary.
            """)

    @Option(name: [.customShort("a"), .long],
            help: ArgumentHelp("Address to connect to: host:port, :port (127.0.0.1) or [ipv6]:port.", valueName: "addr"))
    var address: String

    @Option(name: [.customShort("p"), .long], help: "Connections, each with one request in flight.")
    var connections = 10

    @Option(name: [.customShort("s"), .long], help: "Message size in bytes, the final '\\n' included.")
    var size = 1024

    @Option(name: [.customShort("d"), .long], help: "Duration in seconds (fractions allowed).")
    var duration: Double = 10

    @Flag(help: "Print the result as one JSON object line on stdout (per-second lines go to stderr).")
    var json = false

    func validate() throws {
        guard connections >= 1 else { throw ValidationError("-p/--connections must be at least 1 (got \(connections)).") }
        guard size >= 1, size <= LoadClient.messageSizeBytesMax else {
            throw ValidationError("-s/--size must be from 1 to \(LoadClient.messageSizeBytesMax) bytes (got \(size)).")
        }
        guard duration > 0, duration.isFinite else {
            throw ValidationError("-d/--duration must be a positive number of seconds (got \(duration)).")
        }
    }

    func run() throws {
        TerminationSignals.block()

        let client: LoadClient
        do {
            let descriptorsNeeded = connections + 16  // epoll, eventfd, stdio and a margin
            let descriptorLimit = FileDescriptorLimit.raiseToHardLimit()
            guard descriptorsNeeded <= descriptorLimit else {
                throw CommandFailure("\(connections) connections need about \(descriptorsNeeded) file descriptors,"
                    + " but the limit is \(descriptorLimit) (ulimit -n)")
            }
            client = try LoadClient(address: try LoadAddress(parsing: address), connections: connections,
                                    messageSizeBytes: size, durationSeconds: duration)
            let signalsSeen = SignalCount()
            try TerminationSignals.startWatching { signal in
                // The first signal ends the run with its summary; a second one leaves at once.
                if signalsSeen.count.add(1, ordering: .relaxed).newValue > 1 { Glibc.exit(128 + signal) }
                client.stop()
            }
        } catch {
            StandardStream.error.writeLine("duplicator-testclient: \(error)")
            throw ExitCode.failure
        }

        let progressStream: StandardStream = json ? .error : .output
        let result: LoadResult
        do {
            result = try client.run { progress in
                progressStream.writeLine("\(Int(progress.requestsPerSecond.rounded())) req/sec")
            }
        } catch {
            StandardStream.error.writeLine("duplicator-testclient: \(error)")
            throw ExitCode.failure
        }

        if result.connectionsEstablished == 0 {
            let reason = result.firstErrorDescription
                ?? "no connect completed in \(Int(result.durationSeconds.rounded())) s (a full accept queue, or packets dropped)"
            StandardStream.error.writeLine("duplicator-testclient: could not connect to \(address): \(reason)")
            if json { StandardStream.output.writeLine(result.jsonLine) }
            throw ExitCode.failure
        }
        StandardStream.output.writeLine(json ? result.jsonLine : result.summary)
    }
}

final class SignalCount: Sendable {
    let count = Atomic<Int>(0)
}

struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

TestClientCommand.main()
