import Glibc
import Testing
@testable import Duplicator

/// A mirror batch that no traffic sends (a lone request, then silence) goes
/// out when its delay is up: the worker's timer wakes it (io_uring: one
/// timeout request armed for the earliest deadline and kept across waits;
/// epoll: a timer descriptor armed the same way), not the next 100 ms tick
/// (issue 26). If the timer never woke the worker, the copies would go out
/// at the tick, 0 to 100 ms later.
@Suite(.timeLimit(.minutes(6))) struct BatchTimerIntegrationTests {
    @Test("a lone request's mirror copy goes out at --mirror-batch-delay, not at the next tick",
          arguments: [Config.Backend.ioUring, .epoll])
    func loneBatchGoesOutAtItsDelay(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0.mirrorBatchDelayUs = 5_000
        }
        defer { proxy.shutdown() }
        let connection = try TestConnection(port: proxy.port)
        let request = [UInt8](repeating: UInt8(ascii: "x"), count: 99) + [UInt8(ascii: "\n")]
        var waits: [Double] = []
        for round in 0..<10 {
            let before = proxy.mirrorTotal(0) { $0.bytesSent.value }
            let start = monotonicSeconds()
            let echo = connection.exchange(request, shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: request.count)
            try #require(echo.received == request, "main's echo of request \(round)")
            let reached = eventually(timeoutSeconds: 2) { proxy.mirrorTotal(0, { $0.bytesSent.value }) >= before + UInt64(request.count) }
            try #require(reached, "request \(round)'s copy never reached the mirror")
            waits.append(monotonicSeconds() - start)
            // The next request at another phase of the worker's tick.
            usleep(UInt32.random(in: 0..<30_000))
        }
        // One late wake allowed (a loaded machine); a tick-driven flush would
        // put about half of them past 45 ms.
        let ninth = waits.sorted()[8]
        #expect(ninth < 0.045, "copies reached the mirror after \(waits.map { Int($0 * 1000) }) ms")
    }
}
