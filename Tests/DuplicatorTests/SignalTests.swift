import Foundation
import Glibc
import Testing
import TestSupport
@testable import Duplicator
import LoadTools

/// The real binary and the signals an operator or the system sends it:
/// none but SIGINT/SIGTERM stops it, and a log line nobody reads is no signal at all.
@Suite("Signals: the duplicator process", .timeLimit(.minutes(6)))
struct SignalTests {
    /// A dead log shipper or `| head` closes stderr's reader: the "draining"
    /// line after SIGTERM then meets EPIPE, which must not kill the drain.
    @Test("with nobody reading stderr, SIGTERM still drains a transfer in flight and exits 0", arguments: Config.Backend.tested)
    func brokenStandardError(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "--drain-timeout", "20s"], port: freePort())
        var generator = SeededGenerator(seed: 23)
        let payload = generator.bytes(2 << 20)
        let connection = try TestConnection(port: proxy.port)
        let firstHalf = Array(payload[..<(1 << 20)])
        let first = connection.exchange(firstHalf, shutdownAfterSending: false, timeoutSeconds: 20, expectBytes: firstHalf.count)
        // Compared outside #expect: on a failure it would diff a megabyte, for minutes.
        let firstIntact = first.received == firstHalf
        #expect(firstIntact, "\(first.received.count) of \(firstHalf.count) bytes")

        // The reader goes away; the proxy keeps serving, and logging fails quietly.
        proxy.errorPipe.fileHandleForReading.closeFile()
        kill(proxy.process.processIdentifier, SIGTERM)
        usleep(300_000)
        #expect(proxy.process.isRunning, "still draining after logging to a closed pipe")
        let rest = Array(payload[(1 << 20)...])
        let second = connection.exchange(rest, timeoutSeconds: 20)
        #expect(second.end == .eof)
        let restIntact = second.received == rest
        #expect(restIntact, "\(second.received.count) of \(rest.count) bytes")
        #expect(eventually(timeoutSeconds: 10) { !proxy.process.isRunning })
        proxy.process.waitUntilExit()
        #expect(proxy.process.terminationReason == .exit)
        #expect(proxy.process.terminationStatus == 0)
    }

    @Test("SIGUSR1 logs the stats line now and the proxy keeps serving")
    func statsOnUSR1() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try ProxyProcess(["-f", "127.0.0.1:\(main.boundPort)"], port: freePort())
        try oneSession(proxy, "before")
        kill(proxy.process.processIdentifier, SIGUSR1)
        let logged = proxy.readStandardError(until: "main->client")
        #expect(logged.contains(try Regex(#"sessions \d+ active, \+\d+ new, \d+ ended; client->main .+/s, main->client .+/s; pool \d+/\d+"#)),
                "stderr: \(logged)")
        #expect(proxy.process.isRunning)
        try oneSession(proxy, "after")
        // Again: each line covers the time since the one before.
        kill(proxy.process.processIdentifier, SIGUSR1)
        #expect(proxy.readStandardError(until: "main->client").contains("+1 new"))
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }

    /// The terminal a proxy was started from going away sends SIGHUP; so do
    /// operators who expect a reload. Neither may take the proxy down.
    @Test("SIGHUP is logged and ignored; the proxy keeps serving")
    func hangUpIgnored() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try ProxyProcess(["-f", "127.0.0.1:\(main.boundPort)"], port: freePort())
        let held = try TestConnection(port: proxy.port)
        #expect(held.exchange(Array("held\n".utf8), shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: 5).received.count == 5)
        kill(proxy.process.processIdentifier, SIGHUP)
        #expect(proxy.readStandardError(until: "SIGHUP").contains("ignored"))
        kill(proxy.process.processIdentifier, SIGHUP)
        usleep(200_000)
        #expect(proxy.process.isRunning)
        try oneSession(proxy, "new")
        // The session open across the signals still works.
        let message = Array("still here\n".utf8)
        let (received, end) = held.exchange(message, timeoutSeconds: 5)
        #expect(received == message && end == .eof)
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }

    /// `duplicator demo | head`: the demo's progress lines then go to a pipe
    /// nobody reads; it finishes its run and its verdict instead of dying.
    @Test("demo with nobody reading stdout runs to the end and exits 0")
    func demoWithBrokenStandardOutput() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try builtBinary("duplicator"))
        process.arguments = ["demo", "-d", "1s", "-p", "2"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        output.fileHandleForReading.closeFile()
        let finished = eventually(timeoutSeconds: 30) { !process.isRunning }
        if !finished { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        #expect(finished)
        #expect(process.terminationReason == .exit && process.terminationStatus == 0,
                "reason \(process.terminationReason.rawValue), status \(process.terminationStatus)")
    }

    private func oneSession(_ proxy: ProxyProcess, _ text: String) throws {
        let connection = try TestConnection(port: proxy.port)
        let message = Array("\(text)\n".utf8)
        let (received, end) = connection.exchange(message, timeoutSeconds: 5)
        #expect(received == message && end == .eof)
    }
}

extension ProxyProcess {
    /// What the process wrote to stderr from now until `text` appears or
    /// `timeoutSeconds` pass; unlike `standardError`, never blocks past that.
    func readStandardError(until text: String, timeoutSeconds: Double = 5) -> String {
        let fd = errorPipe.fileHandleForReading.fileDescriptor
        var collected: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = monotonicSeconds() + timeoutSeconds
        while !String(decoding: collected, as: UTF8.self).contains(text) {
            let left = deadline - monotonicSeconds()
            guard left > 0 else { break }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(min(left, 0.1) * 1000) + 1) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            collected += buffer[0..<count]
        }
        return String(decoding: collected, as: UTF8.self)
    }
}
