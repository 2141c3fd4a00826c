import Dispatch
import Foundation
import Glibc
import LoadTools
import Testing

extension LoadToolsTests {
    @Suite struct LoadClientTests {
        private func address(_ server: TestServer) -> LoadAddress {
            LoadAddress(host: "127.0.0.1", port: server.boundPort)
        }

        private func expectOrdered(_ result: LoadResult) {
            #expect(result.latencyP50Micros > 0)
            #expect(result.latencyP50Micros <= result.latencyP90Micros)
            #expect(result.latencyP90Micros <= result.latencyP99Micros)
            #expect(result.latencyP99Micros <= result.latencyP999Micros)
            #expect(result.latencyP999Micros <= result.latencyMaxMicros)
        }

        @Test(arguments: [LoadClientBackend.ioUring, .epoll])
        func echoRoundTrip(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            var ticks: [LoadProgress] = []
            let result = try LoadClient(address: address(server), connections: 10, messageSizeBytes: 1024, durationSeconds: 1.2,
                                        backend: backend)
                .run { ticks.append($0) }
            #expect(result.backend.hasPrefix(backend == .epoll ? "epoll" : "io_uring (multishot"), "\(result.backend)")
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.requests > 0)
            #expect(result.connectionsEstablished == 10)
            #expect(result.durationSeconds >= 1.2 && result.durationSeconds < 2)
            #expect(result.bytesReceived >= result.requests * 1024)
            #expect(result.bytesSent >= result.bytesReceived)
            #expect(result.clientCPUSeconds > 0)
            expectOrdered(result)
            #expect(ticks.count == 1)
            #expect(ticks.first.map { $0.intervalRequests > 0 && $0.connectionsActive == 10 } == true)
            // Every request is one line at the server; it has seen at least the completed ones.
            #expect(server.totalLinesReceived >= result.requests)
            #expect(eventually { server.connectionsOpen == 0 })
            #expect(server.connectionRecords().count == 10)
            #expect(server.totalBytesReceived == result.bytesSent)
        }

        @Test(arguments: [(65536, 4), (1_000_000, 2), (100_003, 3)], [LoadClientBackend.ioUring, .epoll])
        func largeMessages(size: (bytes: Int, connections: Int), backend: LoadClientBackend) throws {
            let (sizeBytes, connections) = size
            let server = try startedServer(.echo)
            defer { server.stop() }
            let result = try LoadClient(address: address(server), connections: connections, messageSizeBytes: sizeBytes,
                                        durationSeconds: 0.4, backend: backend).run()
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.requests > 0)
            #expect(result.bytesReceived >= result.requests * UInt64(sizeBytes))
            expectOrdered(result)
        }

        @Test(arguments: [1, 2, 16, 17, 18], [LoadClientBackend.ioUring, .epoll])
        func tinyMessages(sizeBytes: Int, backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            // Half a second, not a tenth: under other suites' load two connects
            // alone could take a tenth, and the run then had no request at all.
            let result = try LoadClient(address: address(server), connections: 2, messageSizeBytes: sizeBytes,
                                        durationSeconds: 0.5, backend: backend).run()
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.requests > 0)
            // One '\n' per message, at its end: the server counts exactly the requests sent.
            #expect(eventually { server.totalLinesReceived * UInt64(sizeBytes) == server.totalBytesReceived })
        }

        @Test(arguments: [LoadClientBackend.ioUring, .epoll])
        func twoHundredConnections(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let result = try LoadClient(address: address(server), connections: 200, durationSeconds: 0.5, backend: backend).run()
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.connectionsEstablished == 200)
            #expect(result.requests >= 200)
            #expect(server.connectionsAccepted == 200)
            expectOrdered(result)
        }

        @Test(arguments: [LoadClientBackend.ioUring, .epoll])
        func refusedConnectionsEndTheRunAtOnce(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            let port = server.boundPort
            server.stop()
            let result = try LoadClient(address: LoadAddress(host: "127.0.0.1", port: port), connections: 3,
                                        durationSeconds: 5, backend: backend).run()
            #expect(result.connectionsEstablished == 0)
            #expect(result.errors == 3)
            #expect(result.requests == 0)
            #expect(result.durationSeconds < 1)
            #expect(result.firstErrorDescription?.contains("Connection refused") == true)
        }

        @Test(arguments: [LoadClientBackend.ioUring, .epoll])
        func countsAWrongReplyAsAnError(backend: LoadClientBackend) throws {
            // A one-connection server that answers every request with the wrong bytes.
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            defer { close(listener) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    _ = bind(listener, $0, length)
                    _ = listen(listener, 1)
                    _ = getsockname(listener, $0, &length)
                }
            }
            let port = UInt16(bigEndian: address.sin_port)
            // A thread of its own: the client's run() blocks the test's thread meanwhile.
            let liarDone = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                defer { liarDone.signal() }
                var waiting = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&waiting, 1, 5000) == 1 else { return }
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else { return }
                var request = [UInt8](repeating: 0, count: 64)
                var received = 0
                while received < 64 {
                    let count = request.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + received, 64 - received, 0) }
                    if count <= 0 { break }
                    received += count
                }
                request[40] ^= 1
                _ = request.withUnsafeBytes { send(fd, $0.baseAddress, 64, Int32(MSG_NOSIGNAL)) }
                usleep(300_000)
                close(fd)
            }
            let result = try LoadClient(address: LoadAddress(host: "127.0.0.1", port: port), connections: 1,
                                        messageSizeBytes: 64, durationSeconds: 3, backend: backend).run()
            #expect(liarDone.wait(timeout: .now() + 5) == .success)
            #expect(result.errors == 1)
            #expect(result.requests == 0)
            #expect(result.connectionsEstablished == 1)
            #expect(result.durationSeconds < 1)
            #expect(result.firstErrorDescription == "connection 0: response byte 40 of request 1 differs from the request")
        }

        @Test(arguments: [LoadClientBackend.ioUring, .epoll])
        func stopEndsARunEarly(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let client = try LoadClient(address: address(server), connections: 2, durationSeconds: 20, backend: backend)
            Thread.detachNewThread {
                usleep(300_000)
                client.stop()
            }
            let result = try client.run()
            #expect(result.durationSeconds < 2)
            #expect(result.requests > 0)
            #expect(result.errors == 0)
        }

        @Test("open loop: requests go out at the fixed rate, spread over the connections, all answered",
              arguments: [LoadClientBackend.ioUring, .epoll])
        func openLoopKeepsTheRate(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let result = try LoadClient(address: address(server), connections: 4, messageSizeBytes: 1024,
                                        durationSeconds: 1.0, requestsPerSecond: 2_000, backend: backend).run()
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.requestsPerSecondAsked == 2_000)
            // Never ahead of the schedule; behind it only by what a busy machine delays.
            #expect(result.requests <= 2_004 && result.requests >= 1_200, "\(result.requests) requests")
            expectOrdered(result)
            #expect(result.latencyP999Micros <= result.latencyP9999Micros && result.latencyP9999Micros <= result.latencyMaxMicros)
            #expect(result.jsonLine.contains(#""rate":2000.0"#))
            #expect(result.summary.contains("open loop at 2000 requests/s"))
        }

        @Test("open loop past what the server can do: latency counts from each request's due time, so it grows",
              arguments: [LoadClientBackend.ioUring, .epoll])
        func openLoopCorrectsCoordinatedOmission(backend: LoadClientBackend) throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            // One connection cannot do a million round trips a second: each
            // request is sent later than due, and its wait counts.
            let result = try LoadClient(address: address(server), connections: 1, messageSizeBytes: 1024,
                                        durationSeconds: 1.0, requestsPerSecond: 1_000_000, backend: backend).run()
            #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
            #expect(result.requests > 100)
            #expect(result.latencyP99Micros > 100_000, "a closed loop would report round trips of microseconds")
        }

        @Test func rejectsBadParameters() throws {
            let target = try LoadAddress(parsing: ":1")
            #expect(throws: LoadClientError.invalidConnections(0)) { try LoadClient(address: target, connections: 0) }
            #expect(throws: LoadClientError.invalidMessageSize(0)) { try LoadClient(address: target, messageSizeBytes: 0) }
            #expect(throws: LoadClientError.invalidDuration(0)) { try LoadClient(address: target, durationSeconds: 0) }
            #expect(throws: LoadClientError.self) { try LoadClient(address: target, durationSeconds: .infinity) }
            #expect(throws: LoadClientError.invalidRate(0)) { try LoadClient(address: target, requestsPerSecond: 0) }
        }

        @Test func resultPrintsAsSummaryAndJSON() throws {
            let result = LoadResult(
                requests: 1000, durationSeconds: 2, latencyP50Micros: 10.25, latencyP90Micros: 20, latencyP99Micros: 30,
                latencyP999Micros: 40, latencyMaxMicros: 50.5, latencyMeanMicros: 12, errors: 1,
                firstErrorDescription: "connection 3: \"closed\"", connectionsRequested: 10, connectionsEstablished: 10,
                messageSizeBytes: 1024, bytesSent: 1_024_000, bytesReceived: 1_024_000, clientCPUSeconds: 0.01)
            #expect(result.requestsPerSecond == 500)
            #expect(result.clientCPUMicrosPerRequest == 10)
            #expect(result.summary.hasPrefix("500.0 requests/s (1000 requests in 2.00 s"))
            #expect(result.summary.contains("p50 10.3  p90 20.0  p99 30.0  p99.9 40.0  max 50.5"))
            #expect(result.jsonLine.hasPrefix(#"{"rps":500.0,"requests":1000,"errors":1,"p50_us":10.250,"#))
            #expect(result.jsonLine.contains(#""client_cpu_us_per_req":10.000,"#))
            #expect(result.jsonLine.contains(#""bytes":2048000,"#))
            #expect(result.jsonLine.hasSuffix(#""first_error":"connection 3: \"closed\""}"#))
            #expect(!result.jsonLine.contains("\n"))
        }
    }
}
