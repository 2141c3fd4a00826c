import Glibc
import LoadTools
import Platform
import Testing

extension LoadToolsTests {
    @Suite struct TestServerTests {
        @Test func echoReturnsEveryByteAndRecordsTheStream() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            #expect(server.boundPort != 0)
            // Larger than the socket buffers, so the server must hold back and resume.
            let bytes = patternBytes(count: 3 << 20)
            let fd = try TestSocket.connect(port: server.boundPort)
            defer { close(fd) }
            let echoed = try TestSocket.exchange(fd, sending: bytes)
            #expect(echoed.count == bytes.count)
            #expect(echoed == bytes)

            #expect(eventually { server.connectionRecords().first?.isOpen == false })
            let records = server.connectionRecords()
            #expect(records.count == 1)
            let record = try #require(records.first)
            #expect(record.acceptIndex == 0)
            #expect(record.bytesReceived == UInt64(bytes.count))
            #expect(record.bytesSent == UInt64(bytes.count))
            #expect(record.receivedDigest == FNV1a64.digest(of: bytes))
            #expect(record.peerClosed)
            #expect(!record.wasReset)
            #expect(server.totalLinesReceived == UInt64(bytes.count { $0 == UInt8(ascii: "\n") }))
            #expect(server.totalBytesReceived == UInt64(bytes.count))
            #expect(server.connectionsAccepted == 1)
            #expect(server.connectionsOpen == 0)
        }

        @Test func sinkDigestEqualsTheDigestOfWhatWasSent() throws {
            let server = try startedServer(.sink)
            defer { server.stop() }
            let first = patternBytes(count: 1 << 20, seed: 1)
            let second = patternBytes(count: 12345, seed: 2)
            for bytes in [first, second] {
                let fd = try TestSocket.connect(port: server.boundPort)
                defer { close(fd) }
                #expect(try TestSocket.exchange(fd, sending: bytes).isEmpty)
            }
            #expect(eventually { server.connectionRecords().allSatisfy { !$0.isOpen } })
            let records = server.connectionRecords()
            #expect(records.map(\.acceptIndex) == [0, 1])
            #expect(records.map(\.bytesReceived) == [UInt64(first.count), UInt64(second.count)])
            #expect(records.map(\.receivedDigest) == [FNV1a64.digest(of: first), FNV1a64.digest(of: second)])
            #expect(records.allSatisfy { $0.bytesSent == 0 && $0.peerClosed && !$0.wasReset })
        }

        @Test func countsLinesWithoutDigests() throws {
            let server = TestServer(address: LoadAddress(host: "127.0.0.1", port: 0), mode: .echo, computesDigests: false)
            try server.start()
            defer { server.stop() }
            let bytes = patternBytes(count: 300_000, seed: 3)
            let fd = try TestSocket.connect(port: server.boundPort)
            defer { close(fd) }
            #expect(try TestSocket.exchange(fd, sending: bytes) == bytes)
            #expect(eventually { server.connectionRecords().first?.isOpen == false })
            #expect(server.connectionRecords().first?.receivedDigest == 0)
            #expect(server.connectionRecords().first?.bytesReceived == UInt64(bytes.count))
            #expect(server.totalLinesReceived == UInt64(bytes.count { $0 == UInt8(ascii: "\n") }))
        }

        @Test func forgetsTheOldestClosedRecordsBeyondTheLimit() throws {
            let server = TestServer(address: LoadAddress(host: "127.0.0.1", port: 0), mode: .sink, retainedClosedRecordsMax: 4)
            try server.start()
            defer { server.stop() }
            let open = try TestSocket.connect(port: server.boundPort)
            defer { close(open) }
            for index in 1...10 {
                let fd = try TestSocket.connect(port: server.boundPort)
                #expect(try TestSocket.exchange(fd, sending: [UInt8(index)]).isEmpty)
                close(fd)
                #expect(eventually { server.connectionRecords().last.map { !$0.isOpen && $0.acceptIndex == UInt64(index) } == true })
            }
            let records = server.connectionRecords()
            #expect(records.first?.acceptIndex == 0 && records.first?.isOpen == true)  // open ones are always kept
            #expect(records.count >= 5 && records.count <= 7)
            #expect(records.map(\.acceptIndex) == records.map(\.acceptIndex).sorted())
            #expect(records.last?.acceptIndex == 10)
            #expect(server.connectionsAccepted == 11)
        }

        @Test func stallAcceptsButNeverReads() throws {
            let server = try startedServer(.stall)
            defer { server.stop() }
            let writer = try TestSocket.connect(port: server.boundPort)
            defer { close(writer) }
            let idle = try TestSocket.connect(port: server.boundPort)
            var idleOpen = true
            defer { if idleOpen { close(idle) } }

            // Write until the kernel's buffers are full: nobody reads on the other side.
            let chunk = [UInt8](repeating: 0x61, count: 65536)
            var written = 0
            while written < 256 << 20 {
                let count = chunk.withUnsafeBytes { send(writer, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if count <= 0 { break }
                written += count
            }
            #expect(errno == EAGAIN)
            #expect(written > 0 && written < 256 << 20)

            #expect(eventually { server.connectionRecords().count == 2 })
            close(idle)
            idleOpen = false
            #expect(eventually { server.connectionRecords().last?.peerClosed == true })
            let records = server.connectionRecords()
            #expect(records.allSatisfy { $0.bytesReceived == 0 && $0.bytesSent == 0 && $0.isOpen })
            #expect(server.connectionsOpen == 2)
            #expect(server.totalBytesReceived == 0)
        }

        @Test func blackholeConnectDoesNotComplete() throws {
            let server = try startedServer(.blackhole)
            defer { server.stop() }
            #expect(server.boundPort != 0)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = server.boundPort.bigEndian
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            #expect(result == -1 && errno == EINPROGRESS)
            var watched = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            #expect(poll(&watched, 1, 300) == 0, "connect completed (revents \(watched.revents))")
            #expect(server.connectionRecords().isEmpty)
        }

        @Test func recordsAReset() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            let fd = try TestSocket.connect(port: server.boundPort)
            _ = send(fd, "ping\n", 5, Int32(MSG_NOSIGNAL))
            #expect(eventually { server.totalBytesReceived == 5 })
            TestSocket.reset(fd)
            #expect(eventually { server.connectionRecords().first?.isOpen == false })
            let record = try #require(server.connectionRecords().first)
            #expect(record.wasReset)
            #expect(record.peerClosed)
            #expect(record.bytesReceived == 5)
        }

        @Test func reportsAPortInUse() throws {
            let first = try startedServer(.sink)
            defer { first.stop() }
            let second = TestServer(address: LoadAddress(host: "127.0.0.1", port: first.boundPort), mode: .echo)
            do {
                try second.start()
                Issue.record("a second server bound port \(first.boundPort)")
            } catch let error as SystemCallError {
                #expect(error.errorNumber == EADDRINUSE)
                #expect(error.description == "bind 127.0.0.1:\(first.boundPort): Address already in use")
            }
        }

        @Test func startsOnlyOnce() throws {
            let server = try startedServer(.sink)
            defer { server.stop() }
            #expect(throws: TestServerError.alreadyStarted) { try server.start() }
            server.stop()
            server.stop()
            #expect(throws: TestServerError.alreadyStarted) { try server.start() }
        }

        @Test func stopClosesEveryDescriptor() throws {
            var ports: [UInt16] = []
            var pollSets: [(TestServerMode, PollSetIdentity)] = []
            for mode in TestServerMode.allCases {
                let server = try startedServer(mode)
                ports.append(server.boundPort)
                var clients: [Int32] = []
                if mode != .blackhole {
                    for _ in 0..<3 { clients.append(try TestSocket.connect(port: server.boundPort)) }
                    #expect(eventually { server.connectionsOpen == 3 })
                    // Its epoll set watches its sockets (a blackhole server watches
                    // none, so it is left to the socket check below).
                    let pollSet = PollSetIdentity.find(watchingAnyOf: tcpSocketTargets(ports: [server.boundPort]))
                    #expect(pollSet != nil, "\(mode): its epoll set and eventfd are found")
                    if let pollSet {
                        #expect(!pollSet.isClosed, "\(mode): the check sees them open while the server runs")
                        pollSets.append((mode, pollSet))
                    }
                }
                if mode == .echo {
                    let result = try LoadClient(address: LoadAddress(host: "127.0.0.1", port: server.boundPort),
                                                connections: 20, durationSeconds: 0.3).run()
                    #expect(result.errors == 0)
                }
                server.stop()
                #expect(server.connectionsOpen == 0, "\(mode)")
                #expect(server.connectionRecords().allSatisfy { !$0.isOpen }, "\(mode)")
                clients.forEach { close($0) }
            }
            // No socket of these servers (listener, accepted, blackhole fillers) is left open...
            let theirSockets = tcpSocketTargets(ports: ports)
            let leaked = openDescriptors().filter { theirSockets.contains($0.value) }
            #expect(leaked.isEmpty, "still open: \(leaked)")
            // ...nor their epoll sets and eventfds, each told by what it is, not
            // by its number: tests of other targets run alongside in this process.
            for (mode, pollSet) in pollSets {
                #expect(pollSet.isClosed, "\(mode): \(pollSet) still open")
            }
        }
    }
}
