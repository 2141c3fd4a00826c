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

            With --hostile MODE, the connections misbehave instead, to measure what they \
            cost other clients of the server or proxy (the run holds them for --duration):
              stall      send a --hostile-request-bytes request (an echo server's reply is \
            as large), then never read
              slow-read  the same request, then read --read-bytes every --read-interval-ms, \
            and again after each whole reply
              slowloris  send one byte every --trickle-interval-ms, never a '\\n'; read what \
            comes back
            It prints "hostile t=... open=... connecting=... ended=..." once a second, then \
            connections opened, refused or failed, reset, closed by the peer, and bytes sent \
            and received. Exits 1 when no connection opened.
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

    @Option(help: ArgumentHelp("Open loop: send this many requests per second over the connections, each at a fixed time whatever the replies do; latency counts from that time (coordinated omission corrected, as wrk2 does), percentiles to p99.99. Default: closed loop.", valueName: "N"))
    var rate: Double?

    @Option(help: ArgumentHelp("How the client does its IO: auto (io_uring where the kernel allows it, else epoll), io_uring (or exit 1), or epoll. The summary and --json say which ran.", valueName: "backend"))
    var backend: LoadClientBackend = .automatic

    @Flag(help: "Print the result as one JSON object line on stdout (per-second lines go to stderr).")
    var json = false

    @Option(help: ArgumentHelp("Misbehave instead: stall, slow-read or slowloris (see above).", valueName: "mode"))
    var hostile: HostileMode?

    @Option(name: .customLong("hostile-request-bytes"), help: "--hostile stall and slow-read: the request's size, its final '\\n' included.")
    var hostileRequestBytes = 1 << 20

    @Option(name: .customLong("read-bytes"), help: "--hostile slow-read: bytes read at each turn; after a whole reply it sends the request again.")
    var readBytes = 4096

    @Option(name: .customLong("read-interval-ms"), help: "--hostile slow-read: milliseconds between reads.")
    var readIntervalMs = 125

    @Option(name: .customLong("trickle-interval-ms"), help: "--hostile slowloris: milliseconds between bytes.")
    var trickleIntervalMs = 1000

    @Option(name: .customLong("receive-buffer-bytes"), help: "--hostile: SO_RCVBUF of each connection, set before connecting (a small window, as slow-read attacks offer); 0: the system's default.")
    var receiveBufferBytes = 0

    @Option(name: .customLong("connects-in-flight"), help: "--hostile: connects started and not yet completed, at most.")
    var connectsInFlight = 256

    func validate() throws {
        if hostile != nil {
            do {
                try hostilePlan.validate()
            } catch {
                throw ValidationError("--hostile: \(error)")
            }
            return
        }
        guard connections >= 1 else { throw ValidationError("-p/--connections must be at least 1 (got \(connections)).") }
        guard size >= 1, size <= LoadClient.messageSizeBytesMax else {
            throw ValidationError("-s/--size must be from 1 to \(LoadClient.messageSizeBytesMax) bytes (got \(size)).")
        }
        guard duration > 0, duration.isFinite else {
            throw ValidationError("-d/--duration must be a positive number of seconds (got \(duration)).")
        }
        if let rate, !(rate > 0 && rate.isFinite && rate <= 1e8) {
            throw ValidationError("--rate must be a positive number of requests per second, at most 1e8 (got \(rate)).")
        }
    }

    var hostilePlan: HostilePlan {
        var plan = HostilePlan(mode: hostile ?? .stall, connections: connections, durationSeconds: duration)
        plan.requestBytes = hostileRequestBytes
        plan.readChunkBytes = readBytes
        plan.readIntervalMs = readIntervalMs
        plan.trickleIntervalMs = trickleIntervalMs
        plan.connectsInFlightMax = connectsInFlight
        plan.receiveBufferBytes = receiveBufferBytes
        return plan
    }

    func run() throws {
        TerminationSignals.block()
        if hostile != nil {
            try runHostile()
            return
        }

        let client: LoadClient
        do {
            try checkDescriptorLimit()
            client = try LoadClient(address: try LoadAddress(parsing: address), connections: connections,
                                    messageSizeBytes: size, durationSeconds: duration, requestsPerSecond: rate,
                                    backend: backend)
            try stopOnSignals { client.stop() }
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

extension TestClientCommand {
    /// One descriptor per connection, and epoll, eventfd, stdio and a margin.
    func checkDescriptorLimit() throws {
        let descriptorsNeeded = connections + 16
        let descriptorLimit = FileDescriptorLimit.raiseToHardLimit()
        guard descriptorsNeeded <= descriptorLimit else {
            throw CommandFailure("\(connections) connections need about \(descriptorsNeeded) file descriptors,"
                + " but the limit is \(descriptorLimit) (ulimit -n)")
        }
    }

    /// The first signal ends the run with its summary; a second one leaves at once.
    func stopOnSignals(_ stop: @escaping @Sendable () -> Void) throws {
        let signalsSeen = SignalCount()
        try TerminationSignals.startWatching { signal in
            if signalsSeen.count.add(1, ordering: .relaxed).newValue > 1 { Glibc.exit(128 + signal) }
            stop()
        }
    }

    func runHostile() throws {
        let client: HostileClient
        do {
            try checkDescriptorLimit()
            client = try HostileClient(address: try LoadAddress(parsing: address), plan: hostilePlan)
            try stopOnSignals { client.stop() }
        } catch {
            StandardStream.error.writeLine("duplicator-testclient: \(error)")
            throw ExitCode.failure
        }

        let progressStream: StandardStream = json ? .error : .output
        let result: HostileResult
        do {
            result = try client.run { progress in progressStream.writeLine(progress.line) }
        } catch {
            StandardStream.error.writeLine("duplicator-testclient: \(error)")
            throw ExitCode.failure
        }
        StandardStream.output.writeLine(json ? result.jsonLine : result.summary)
        if result.connectionsOpened == 0 {
            StandardStream.error.writeLine("duplicator-testclient: could not connect to \(address): "
                + (result.firstErrorDescription ?? "no connect completed"))
            throw ExitCode.failure
        }
    }
}

extension HostileMode: ExpressibleByArgument {}
extension LoadClientBackend: ExpressibleByArgument {}

final class SignalCount: Sendable {
    let count = Atomic<Int>(0)
}

struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

TestClientCommand.main()
