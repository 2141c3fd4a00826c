import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

/// The checks in `FakeSessionIO` must fire, or every session test could pass
/// vacuously: here a "buggy session" (the test itself) breaks each rule.
@Suite("SessionTests.FakeChecks")
struct FakeChecksTests {
    private func sessionWithMainSendInFlight() throws -> (FakeSessionIO, Int32, FakeOp) {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, TestBytes.text("payload"))
        let send = try #require(io.pendingOp(.send, .main))
        return (io, try #require(io.fd(.main)), send)
    }

    private func tag(_ kind: OperationKind, _ peer: Leg, _ op: FakeOp) -> CompletionTag {
        CompletionTag(kind: kind.rawValue, leg: peer.rawValue, generation: op.key.generation, session: op.key.index)
    }

    @Test("close with an operation in flight, and a second close, are reported")
    func closeChecks() throws {
        let (io, mainFD, send) = try sessionWithMainSendInFlight()
        withKnownIssue { io.close(fd: mainFD, tag: tag(.close, .main, send)) }
        withKnownIssue { io.close(fd: mainFD, tag: tag(.close, .main, send)) }
        #expect(io.violations.first?.contains("with operations in flight") == true)
        #expect(io.violations.contains { $0.contains("second close") })
        #expect(io.violations.contains { $0.contains("after fd \(mainFD) was closed") })
    }

    @Test("a second send in flight, a shutdown before the queue is sent, and an op after cancel are reported")
    func orderingChecks() throws {
        let (io, mainFD, send) = try sessionWithMainSendInFlight()
        withKnownIssue { io.send(fd: mainFD, slot: send.slot, offset: 0, length: 1, tag: tag(.send, .main, send)) }
        #expect(io.violations.last?.contains("a second send in flight") == true)
        withKnownIssue { io.shutdownWrite(fd: mainFD, tag: tag(.shutdown, .main, send)) }
        #expect(io.violations.last?.contains("while a send is in flight") == true)
        io.cancel(fd: mainFD, tag: tag(.cancel, .main, send))
        withKnownIssue { io.discard(fd: mainFD, tag: tag(.discard, .main, send)) }
        #expect(io.violations.contains { $0.contains("after a cancel") })
    }

    @Test("recycling a held slot, and a slot overwritten under a send in flight, are reported")
    func slotChecks() throws {
        let (io, _, send) = try sessionWithMainSendInFlight()
        withKnownIssue { io.recycle(slot: send.slot) }
        #expect(io.violations.last?.contains("still held") == true)
        io.pool.pointer(send.slot).storeBytes(of: 0xFF, as: UInt8.self)
        withKnownIssue { io.completeSend(.main) }
        #expect(io.violations.contains { $0.contains("overwritten") })
    }

    @Test("a session that ends with an fd never closed is reported by expectQuiescent")
    func quiescenceCheck() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        try #require(io.start() != nil)
        withKnownIssue { io.expectQuiescent() }
        finish(io)
        io.expectQuiescent()
    }
}
