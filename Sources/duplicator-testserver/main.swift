import ArgumentParser
import Glibc
import LoadTools
import Platform

extension TestServerMode: ExpressibleByArgument {}

struct TestServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "duplicator-testserver",
        abstract: "A TCP echo, sink, stall or blackhole server for testing and benchmarking duplicator.",
        discussion: """
            Prints "<connections> c, <lines> rps" once a second: connections open now, and \
            '\\n' bytes received per second (requests, for duplicator-testclient). Runs until \
            SIGINT or SIGTERM.

            Modes:
              echo       writes back every byte it reads
              sink       reads and drops
              stall      accepts and never reads
              blackhole  a full accept queue: new connects never complete
            """)

    @Option(name: [.customShort("l"), .long],
            help: ArgumentHelp("Address to listen on: host:port, :port (all IPv4 interfaces) or [ipv6]:port.", valueName: "addr"))
    var listen: String

    @Option(help: "What to do with connections (see the modes above).")
    var mode: TestServerMode = .echo

    @Flag(name: .shortAndLong, help: "Do not print the per-second line.")
    var quiet = false

    func run() throws {
        TerminationSignals.block()
        FileDescriptorLimit.raiseToHardLimit()

        let server: TestServer
        do {
            // Nothing here reads the digests, so the server saves the hashing.
            server = TestServer(address: try LoadAddress(parsing: listen), mode: mode, computesDigests: false)
            try server.start()
        } catch {
            StandardStream.error.writeLine("duplicator-testserver: \(error)")
            throw ExitCode.failure
        }
        StandardStream.error.writeLine("duplicator-testserver: \(mode) on \(server.boundAddress.map(String.init(describing:)) ?? listen)")

        let tickNanos: UInt64 = 1_000_000_000
        var lastTickNanos = MonotonicClock.nowNanos()
        var nextTickNanos = lastTickNanos + tickNanos
        var lastLines = server.totalLinesReceived
        while true {
            let nowNanos = MonotonicClock.nowNanos()
            if nowNanos < nextTickNanos, TerminationSignals.wait(timeoutNanos: nextTickNanos - nowNanos) != nil {
                break
            }
            let tickedNanos = MonotonicClock.nowNanos()
            if tickedNanos < nextTickNanos { continue }
            let lines = server.totalLinesReceived
            let linesPerSecond = Double(lines - lastLines) * 1e9 / Double(tickedNanos - lastTickNanos)
            if !quiet {
                StandardStream.output.writeLine("\(server.connectionsOpen) c, \(Int(linesPerSecond.rounded())) rps")
            }
            lastLines = lines
            lastTickNanos = tickedNanos
            while nextTickNanos <= tickedNanos { nextTickNanos += tickNanos }
        }
        server.stop()
    }
}

TestServerCommand.main()
