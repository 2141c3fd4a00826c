import Foundation
import Glibc
@testable import LoadTools
import Testing

extension LoadToolsTests {
    @Suite struct HostileClientTests {
        // MARK: Pure parts

        @Test func turnQueueIsFIFOByDueTime() {
            var queue = TurnQueue(capacity: 3)
            #expect(queue.nextDueNanos == nil)
            #expect(queue.popDue(nowNanos: .max) == nil)
            queue.push(index: 2, dueNanos: 100)
            queue.push(index: 0, dueNanos: 150)
            queue.push(index: 1, dueNanos: 150)
            #expect(queue.count == 3 && queue.nextDueNanos == 100)
            #expect(queue.popDue(nowNanos: 99) == nil)
            #expect(queue.popDue(nowNanos: 100) == 2)
            #expect(queue.popDue(nowNanos: 149) == nil)
            // Wraps around its storage.
            queue.push(index: 2, dueNanos: 200)
            #expect(queue.popDue(nowNanos: 1000) == 0)
            #expect(queue.popDue(nowNanos: 1000) == 1)
            #expect(queue.popDue(nowNanos: 1000) == 2)
            #expect(queue.isEmpty)
        }

        @Test func turnQueueMovesAnEarlierDueUpToTheLastOne() {
            var queue = TurnQueue(capacity: 2)
            queue.push(index: 0, dueNanos: 500)
            queue.push(index: 1, dueNanos: 400)  // a clock reading taken earlier
            #expect(queue.popDue(nowNanos: 450) == nil)
            #expect(queue.popDue(nowNanos: 500) == 0)
            #expect(queue.nextDueNanos == 500)
            #expect(queue.popDue(nowNanos: 500) == 1)
        }

        @Test func requestEndsWithItsOnlyNewlineAndTheTrickleHasNone() {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1000, alignment: 1)
            defer { buffer.deallocate() }
            HostileRequest.fill(buffer)
            #expect(buffer.last == UInt8(ascii: "\n"))
            #expect(buffer.count { $0 == UInt8(ascii: "\n") } == 1)
            #expect((0..<100_000).allSatisfy { HostileRequest.patternByte(at: $0) != UInt8(ascii: "\n") })
            #expect((0..<100_000).allSatisfy { (33...121).contains(HostileRequest.patternByte(at: $0)) })
        }

        @Test func planValidation() throws {
            var plan = HostilePlan(mode: .slowRead, connections: 10, durationSeconds: 1)
            try plan.validate()
            #expect(plan.requestBytes == 1 << 20 && plan.readChunkBytes == 4096 && plan.readIntervalMs == 125)
            #expect(plan.turnIntervalNanos == 125_000_000)
            plan.mode = .slowloris
            #expect(plan.turnIntervalNanos == 1_000_000_000)
            plan.mode = .stall
            #expect(plan.turnIntervalNanos == 0)
            let changes: [(inout HostilePlan) -> Void] = [
                { $0.connections = 0 }, { $0.durationSeconds = 0 }, { $0.durationSeconds = .infinity },
                { $0.requestBytes = 0 }, { $0.readChunkBytes = 0 }, { $0.readIntervalMs = 0 },
                { $0.trickleIntervalMs = -1 }, { $0.connectsInFlightMax = 0 }, { $0.receiveBufferBytes = -1 },
            ]
            for change in changes {
                var bad = plan
                change(&bad)
                #expect(throws: HostileClientError.self) { try bad.validate() }
            }
            #expect(throws: HostileClientError.invalid("connections", "0", "1 to \(HostilePlan.connectionsMax)")) {
                try HostileClient(address: LoadAddress(host: "127.0.0.1", port: 1),
                                  plan: HostilePlan(mode: .stall, connections: 0, durationSeconds: 1))
            }
        }

        @Test func resultAndProgressPrint() {
            var result = HostileResult(mode: .slowRead, connectionsRequested: 10)
            result.connectionsOpened = 8
            result.connectionsRefused = 2
            result.connectionsReset = 3
            result.connectionsOpenAtEnd = 5
            result.requestsSent = 8
            result.bytesSent = 1000
            result.bytesReceived = 40
            result.durationSeconds = 2
            result.firstErrorDescription = "connection 9: \"refused\""
            #expect(result.connectionsEnded == 5)
            #expect(result.jsonLine == #"{"mode":"slow-read","connections":10,"opened":8,"refused":2,"connect_failures":0,"#
                + #""reset":3,"closed_by_peer":0,"open_at_end":5,"connecting_at_end":0,"requests_sent":8,"bytes_sent":1000,"#
                + #""bytes_received":40,"duration_s":2.000000,"first_error":"connection 9: \"refused\""}"#)
            #expect(result.summary.hasPrefix("hostile slow-read: 8 of 10 connections opened in 2.00 s; at the end 5 open"))
            let progress = HostileProgress(elapsedSeconds: 1.04, connectionsOpen: 7, connectionsConnecting: 1,
                                           connectionsWaiting: 2, connectionsEnded: 0, requestsSent: 6,
                                           bytesSent: 12, bytesReceived: 3)
            #expect(progress.line == "hostile t=1.0 open=7 connecting=1 waiting=2 ended=0 requests_sent=6 bytes_sent=12 bytes_received=3")
        }

        // MARK: Against the echo server

        private func run(_ plan: HostilePlan, against server: TestServer) throws -> HostileResult {
            try HostileClient(address: LoadAddress(host: "127.0.0.1", port: server.boundPort), plan: plan).run()
        }

        @Test func stallSendsItsRequestAndNeverReads() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            var plan = HostilePlan(mode: .stall, connections: 4, durationSeconds: 0.6)
            plan.requestBytes = 32 * 1024
            plan.connectsInFlightMax = 2  // pacing: the rest wait their turn
            let result = try run(plan, against: server)
            #expect(result.connectionsOpened == 4 && result.connectionsOpenAtEnd == 4, "\(result.summary)")
            #expect(result.requestsSent == 4)
            #expect(result.bytesSent == 4 * 32 * 1024)
            #expect(result.bytesReceived == 0)
            #expect(result.connectionsEnded == 0)
            #expect(server.connectionsAccepted == 4)
            #expect(server.totalLinesReceived == 4)  // each request is one line
            #expect(eventually { server.connectionsOpen == 0 })  // closed at the end of the run
        }

        @Test func slowReadReadsTheWholeReplyAtItsPace() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            var plan = HostilePlan(mode: .slowRead, connections: 3, durationSeconds: 0.8)
            plan.requestBytes = 32 * 1024
            plan.readIntervalMs = 20  // 8 turns of 4 KiB: about 160 ms per reply
            let result = try run(plan, against: server)
            #expect(result.connectionsOpened == 3 && result.connectionsOpenAtEnd == 3, "\(result.summary)")
            // A whole reply in about 160 ms, then the request again: at least two each.
            #expect(result.requestsSent >= 6)
            #expect(result.bytesReceived >= 3 * 32 * 1024)
            #expect(result.bytesReceived <= result.bytesSent)
            #expect(result.bytesSent == UInt64(result.requestsSent) * 32 * 1024)
        }

        @Test func slowReadIsSlow() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            var plan = HostilePlan(mode: .slowRead, connections: 2, durationSeconds: 0.5)
            plan.requestBytes = 64 * 1024
            plan.readIntervalMs = 100  // 4 KiB per 100 ms: at most 6 turns in 0.5 s
            let result = try run(plan, against: server)
            #expect(result.bytesReceived >= 2 * 3 * 4096, "\(result.summary)")
            #expect(result.bytesReceived <= 2 * 6 * 4096)
        }

        @Test func slowlorisTricklesWithoutANewline() throws {
            let server = try startedServer(.echo)
            defer { server.stop() }
            var plan = HostilePlan(mode: .slowloris, connections: 3, durationSeconds: 0.6)
            plan.trickleIntervalMs = 50
            let result = try run(plan, against: server)
            #expect(result.connectionsOpened == 3 && result.connectionsOpenAtEnd == 3, "\(result.summary)")
            #expect(result.bytesSent >= 3 * 6 && result.bytesSent <= 3 * 14)
            #expect(result.bytesReceived > 0 && result.bytesReceived <= result.bytesSent)  // the echo, read as it comes
            #expect(eventually { server.totalBytesReceived == result.bytesSent })
            #expect(server.totalLinesReceived == 0)
        }

        @Test func countsRefusedConnects() throws {
            let server = try startedServer(.echo)
            let port = server.boundPort
            server.stop()
            let result = try HostileClient(address: LoadAddress(host: "127.0.0.1", port: port),
                                           plan: HostilePlan(mode: .stall, connections: 3, durationSeconds: 0.3)).run()
            #expect(result.connectionsOpened == 0)
            #expect(result.connectionsRefused == 3)
            #expect(result.firstErrorDescription?.contains("Connection refused") == true)
        }

        @Test func countsConnectionsThePeerEnds() throws {
            let server = try startedServer(.echo)
            var plan = HostilePlan(mode: .stall, connections: 3, durationSeconds: 3)
            plan.requestBytes = 1024
            let client = try HostileClient(address: LoadAddress(host: "127.0.0.1", port: server.boundPort), plan: plan)
            Thread.detachNewThread {
                usleep(300_000)
                server.stop()  // closes every connection
                usleep(200_000)
                client.stop()
            }
            let result = try client.run()
            #expect(result.connectionsOpened == 3)
            #expect(result.connectionsClosedByPeer + result.connectionsReset == 3, "\(result.summary)")
            #expect(result.connectionsOpenAtEnd == 0)
        }
    }
}
