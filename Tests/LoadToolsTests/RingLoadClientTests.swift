import Glibc
@testable import LoadTools
import Testing

extension LoadToolsTests {
    /// The load client's io_uring path seen from outside: what an echo server
    /// received and returned, the rate it kept, and its fallback receive path.
    @Suite struct RingLoadClientTests {
        private func address(_ server: TestServer) -> LoadAddress {
            LoadAddress(host: "127.0.0.1", port: server.boundPort)
        }

        @Test("single-shot receives (kernels without multishot recv): every byte echoed exactly",
              arguments: [(1024, 10), (1_000_000, 2), (17, 3)])
        func singleShotReceives(size: (bytes: Int, connections: Int)) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let client = try LoadClient(address: address(server), connections: size.connections, messageSizeBytes: size.bytes,
                                        durationSeconds: 0.5, requestsPerSecond: nil, backend: .ioUring,
                                        multishotReceives: false)
            let result = try client.run()
            #expect(result.backend == "io_uring (single-shot receives)")
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.requests > 0)
            #expect(result.bytesReceived >= result.requests * UInt64(size.bytes))
            #expect(eventually { server.connectionsOpen == 0 })
            // Every completed request reached the server whole. Exactly what was sent
            // only for small messages: a close with echoed bytes unread resets the
            // connection, and a large request's tail still in the send buffer is lost.
            #expect(server.totalBytesReceived >= result.requests * UInt64(size.bytes))
            #expect(server.totalBytesReceived <= result.bytesSent)
            if size.bytes <= 1024 { #expect(server.totalBytesReceived == result.bytesSent) }
        }

        @Test("multishot receives: the server got exactly what was sent, and every completed request came back whole")
        func exactBytes() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let result = try LoadClient(address: address(server), connections: 10, messageSizeBytes: 1024, durationSeconds: 0.6,
                                        backend: .ioUring).run()
            #expect(result.backend == "io_uring (multishot receives)")
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(eventually { server.connectionsOpen == 0 })
            #expect(server.totalBytesReceived == result.bytesSent)
            // At most one request per connection was cut by the end of the run.
            #expect(result.bytesSent - result.requests * 1024 <= 10 * 1024)
            #expect(result.bytesReceived - result.requests * 1024 < 10 * 1024)
            #expect(server.totalLinesReceived >= result.requests)
        }

        @Test("open loop on io_uring: the rate over 10 connections is kept, never exceeded",
              arguments: [LoadClientBackend.ioUring, .epoll])
        func rateHeld(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let result = try LoadClient(address: address(server), connections: 10, messageSizeBytes: 1024,
                                        durationSeconds: 1.0, requestsPerSecond: 5_000, backend: backend).run()
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            // Ahead of the schedule never (one interval of slack for the first requests);
            // behind it only by what a busy shared machine delays.
            #expect(result.requests <= 5_010 && result.requests >= 3_000, "\(result.requests) requests")
            #expect(result.latencyP50Micros > 0 && result.latencyP50Micros < 100_000)
        }
    }
}
