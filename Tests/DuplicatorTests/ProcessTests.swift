import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Duplicator
import LoadTools

/// The real binary as a user runs it: descriptors, memory, signals.
@Suite("Integration: the duplicator process", .timeLimit(.minutes(6)))
struct ProcessTests {
    /// Promise 5 and the no-leak rule: hundreds of short sessions with failing
    /// mirrors leave the process's descriptor count where it was.
    @Test("no descriptor leaks after 300 short sessions with failing mirrors", arguments: Config.Backend.tested)
    func noDescriptorLeaks(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let sink = try startServer(.sink)
        defer { sink.stop() }
        let closing = try FaultServer.start(.closeAtOnce)
        defer { closing.stop() }
        let refusing = RefusingPort()
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)",
                                      "-m", "127.0.0.1:\(refusing.port),127.0.0.1:\(closing.port)",
                                      "-m", "127.0.0.1:\(sink.boundPort)", "--mirror-linger", "200ms"],
                                     port: freePort())
        // Let the startup probe connection finish before the baseline.
        #expect(eventually { main.connectionRecords().allSatisfy { !$0.isOpen } })
        usleep(300_000)
        let baseline = try #require(proxy.settledDescriptorCount())
        #expect(baseline > 0)
        for index in 0..<300 {
            let connection = try TestConnection(port: proxy.port)
            let message = Array("session \(index)\n".utf8)
            let (received, end) = connection.exchange(message, timeoutSeconds: 5)
            #expect(received == message && end == .eof, "session \(index)")
        }
        #expect(eventually(timeoutSeconds: 10) { proxy.descriptorCount == baseline },
                "descriptors: \(String(describing: proxy.descriptorCount)), baseline \(baseline)")
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }

    /// Graceful shutdown: SIGTERM stops accepting but a transfer in flight completes intact.
    @Test("SIGTERM lets a transfer in flight finish, then exits 0", arguments: Config.Backend.tested)
    func gracefulShutdown(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "--drain-timeout", "20s"], port: freePort())
        var generator = SeededGenerator(seed: 11)
        let payload = generator.bytes(8 << 20)
        let connection = try TestConnection(port: proxy.port)
        // Half of it now, the signal, then the rest.
        let firstHalf = Array(payload[..<(4 << 20)])
        let first = connection.exchange(firstHalf, shutdownAfterSending: false, timeoutSeconds: 20, expectBytes: firstHalf.count)
        #expect(first.received == firstHalf)
        kill(proxy.process.processIdentifier, SIGTERM)
        usleep(200_000)
        #expect(proxy.process.isRunning, "still draining")
        // New clients are no longer accepted.
        #expect((try? TestConnection(port: proxy.port, timeoutSeconds: 1)) == nil)
        let rest = Array(payload[(4 << 20)...])
        let second = connection.exchange(rest, timeoutSeconds: 20)
        #expect(second.end == .eof)
        #expect(second.received == rest)
        #expect(eventually(timeoutSeconds: 10) { !proxy.process.isRunning })
        proxy.process.waitUntilExit()
        #expect(proxy.process.terminationStatus == 0)
    }

    @Test("a second signal stops at once", arguments: Config.Backend.tested)
    func secondSignal(backend: Config.Backend) throws {
        let main = try startServer(.stall)
        defer { main.stop() }
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "--drain-timeout", "60s"], port: freePort())
        let connection = try TestConnection(port: proxy.port)
        _ = connection.exchange(Array("held open".utf8), shutdownAfterSending: false, timeoutSeconds: 0.3)
        kill(proxy.process.processIdentifier, SIGINT)
        // A signal sent while the first is still pending merges with it (they
        // do not queue), which on a loaded machine took 300 ms to rule out:
        // send the second once the proxy says it is draining.
        #expect(proxy.readStandardError(until: "draining").contains("draining"))
        #expect(proxy.process.isRunning, "draining the held session")
        let start = monotonicSeconds()
        #expect(proxy.signalAndWait(SIGINT, timeoutSeconds: 5) == 0)
        #expect(monotonicSeconds() - start < 2)
    }
}
