import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Failures of main and the client, aborts, linger, stale completions, a dry pool, and an error at every stage, without sockets.
extension SessionTests {
    // MARK: - Main and client failures

    @Test("main refused: the client is closed at once (after its recv is cancelled)")
    func mainConnectRefused() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.completeConnect(.mirror(0))
        let early = TestBytes.text("sent before main failed")
        io.completeRecv(.client, early)
        io.completeConnect(.main, result: -ECONNREFUSED)
        #expect(session.endCause == .mainConnectFailure)
        #expect(io.stats.sessionsEndedByMainConnectFailure.value == 1)
        #expect(io.record(.main)?.closeCount == 1)
        #expect(io.record(.client)?.cancelRequested == true)
        #expect(io.record(.client)?.closeCount == 0, "its recv is still in flight")
        io.completeCancelled()
        #expect(io.record(.client)?.closeCount == 1)
        finish(io)
        #expect(io.sent(to: .main).isEmpty)
        #expect(io.sent(to: .client).isEmpty)
        #expect(io.sent(to: .mirror(0)).isPrefix(of: early))
        io.expectQuiescent()
    }

    @Test("main's connect timing out ends the session as a main connect failure")
    func mainConnectTimeout() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        let session = try #require(io.start())
        io.completeConnect(.main, result: -ECANCELED)
        #expect(session.endCause == .mainConnectFailure)
        io.completeCancelled()
        #expect(!session.isActive)
        io.expectQuiescent()
    }

    @Test("main's socket failing to open ends a session without mirrors at once")
    func mainOpenSocketFailureWithoutMirrors() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0))
        io.openFailures[.main] = EMFILE
        let session = try #require(io.start())
        #expect(session.endCause == .mainConnectFailure)
        #expect(!session.isActive)
        #expect(io.record(.client)?.closeCount == 1)
        io.expectQuiescent()
    }

    /// Regression: when main's socket cannot be opened (EMFILE under load),
    /// `start` fails before it reaches the mirrors, whose legs are still
    /// idle; the session must still end at once, or it leaks a table slot.
    @Test("main's socket failing to open ends a session that has mirrors")
    func mainOpenSocketFailureWithMirrors() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        io.openFailures[.main] = EMFILE
        let session = try #require(io.start())
        #expect(session.endCause == .mainConnectFailure)
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.requests(.connect).isEmpty)
        #expect(!session.isActive, "the session must end with idle mirror legs")
        io.context.nowMs += 60_000
        io.tickAll()
        if session.isActive { session.abort(io: io) }
        #expect(!session.isActive, "neither tick nor abort was needed")
        #expect(io.stats.sessionsActive.value == 0)
    }

    @Test("main resets mid-reply: mainError, the client is closed", arguments: [OperationKind.recv, .send])
    func mainResetMidReply(kind: OperationKind) throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(200, seed: 1)
        io.completeRecv(.client, request)
        if kind == .recv {
            io.flushAllSends()
            let reply = TestBytes.random(900, seed: 2)
            io.completeRecv(.main, reply)
            io.completeSend(.client, count: 300)
            io.fail(.recv, .main, errno: ECONNRESET)
            #expect(io.record(.client)?.cancelRequested == true, "its send is in flight")
            #expect(io.record(.main)?.closeCount == 1)
        } else {
            io.fail(.send, .main, errno: ECONNRESET)
            #expect(io.record(.main)?.cancelRequested == true, "its recv is in flight")
        }
        #expect(session.endCause == .mainError)
        #expect(io.stats.sessionsEndedByMainError.value == 1)
        io.completeCancelled()
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.record(.main)?.closeCount == 1)
        finish(io)
        if kind == .recv {
            #expect(io.sent(to: .client) == Array(TestBytes.random(900, seed: 2)[..<300]))
        }
        #expect(io.sent(to: .mirror(0)) == request, "mirrors flush what they have")
        io.expectQuiescent()
    }

    @Test("client resets: clientError, the client is closed, main gets what the client sent, then FIN, and is closed",
          arguments: [OperationKind.recv, .send])
    func clientReset(kind: OperationKind) throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.connectAll()
        // Main has not taken the client's bytes yet when the client fails.
        let request = TestBytes.random(300, seed: 3)
        io.completeRecv(.client, request)
        if kind == .recv {
            io.fail(.recv, .client, errno: ECONNRESET)
        } else {
            io.completeRecv(.main, TestBytes.text("reply"))
            io.fail(.send, .client, errno: EPIPE)
        }
        #expect(session.endCause == .clientError)
        #expect(io.stats.sessionsEndedByClientError.value == 1)
        io.completeCancelled()
        #expect(io.record(.client)?.closeCount == 1)
        #expect(io.record(.main)?.closeCount == 0, "main flushes first")
        io.flushSends(.main)
        #expect(io.sent(to: .main) == request, "main got every byte the client sent")
        io.completeShutdown(.main)
        // Main's reply to it is discarded, then its EOF closes it.
        if io.hasPending(.recv, .main) { io.completeEOF(.main) } else { io.completeDiscard(.main, result: 0) }
        #expect(io.record(.main)?.closeCount == 1)
        finish(io)
        #expect(io.sent(to: .mirror(0)) == request)
        io.expectQuiescent()
    }

    // MARK: - Abort, linger, stale completions, dry pool

    @Test("abort closes every leg, after cancelling what is in flight")
    func abortClosesEveryLeg() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2))
        let session = try #require(io.start())
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(100, seed: 1))
        io.abort()
        #expect(session.endCause == .aborted)
        #expect(io.stats.sessionsAborted.value == 1)
        for peer in [Leg.client, .main, .mirror(0), .mirror(1)] {
            #expect(io.record(peer)?.cancelRequested == true, "\(peer)")
            #expect(io.record(peer)?.closeCount == 0, "\(peer) has operations in flight")
        }
        io.completeCancelled()
        #expect(!session.isActive)
        io.expectQuiescent()
    }

    @Test("abort while connecting cancels the connects without counting mirror failures")
    func abortWhileConnecting() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        let session = try #require(io.start())
        io.abort()
        io.completeCancelled()
        #expect(!session.isActive)
        #expect(io.stats.mirrors[0].connectTimeouts.value == 0)
        #expect(io.stats.mirrors[0].connectFailures.value == 0)
        #expect(io.context.mirrorIsTried(0))
        io.expectQuiescent()
    }

    @Test("mirrors still flushing after the session completed are closed by tick after mirrorLingerMs")
    func mirrorLinger() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2, lingerMs: 2_000))
        io.context.nowMs = 1_000
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(800, seed: 1)
        io.completeRecv(.client, request)
        io.flushSends(.main)
        io.flushSends(.mirror(0))
        // mirror1 never completes its send; mirror0 never sends its EOF.
        io.completeEOF(.client)
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeRecv(.main, TestBytes.text("ok"))
        io.completeEOF(.main)
        io.flushSends(.client)
        io.completeShutdown(.client)
        #expect(session.endCause == .completed)
        #expect(session.isActive && session.isEnding)
        io.context.nowMs = 2_999
        io.tickAll()
        #expect(io.record(.mirror(0))?.cancelRequested == false)
        #expect(io.record(.mirror(1))?.cancelRequested == false)
        io.context.nowMs = 3_000
        io.tickAll()
        #expect(io.record(.mirror(0))?.cancelRequested == true)
        #expect(io.record(.mirror(1))?.cancelRequested == true)
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0, "mirror0 had all its bytes")
        #expect(io.stats.mirrors[1].sessionsCutForLag.value == 1, "mirror1 still had a backlog")
        #expect(io.stats.mirrors[1].bytesMissed.value == 800)
        io.completeCancelled()
        #expect(!session.isActive)
        #expect(io.sent(to: .mirror(0)) == request)
        #expect(io.sent(to: .mirror(1)).isEmpty)
        // mirror1 lost bytes; mirror0 got its whole stream (the linger only ended its wait for EOF).
        #expect(io.lastEnded?.mirrorMissing == [false, true])
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        #expect(io.stats.mirrors[0].bytesSent.value == 800)
        io.expectQuiescent()
    }

    /// No session lives forever: when no byte moved between client and main
    /// for the idle timeout, the session ends (counted); a mirror's traffic
    /// does not keep it alive, and mirrors still get their bytes and linger.
    @Test("a session idle between client and main for idleTimeoutMs ends; mirror traffic does not count")
    func idleTimeout() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1, idleTimeoutMs: 5_000))
        io.context.nowMs = 1_000
        let session = try #require(io.start())
        io.connectAll()
        let request = TestBytes.random(300, seed: 7)
        io.completeRecv(.client, request)
        io.flushSends(.main)
        io.context.nowMs = 5_000
        io.completeRecv(.main, TestBytes.text("reply"))
        io.flushSends(.client)
        io.context.nowMs = 9_000
        io.completeDiscard(.mirror(0), result: 100)
        // The worker's own tick runs the idle check (every WorkerCore.idleCheckMs
        // at most): the session ends at the first check from 10 000 ms on.
        io.context.nowMs = 9_999
        io.workerTick()
        #expect(!session.isEnding, "4999 ms since the reply")
        var endedAtMs: UInt64?
        while io.context.nowMs < 12_000 && endedAtMs == nil {
            io.context.nowMs += 50
            io.workerTick()
            if session.isEnding { endedAtMs = io.context.nowMs }
        }
        let ended = try #require(endedAtMs, "the worker's tick never ended the idle session")
        #expect(ended >= 10_000 && ended <= 10_000 + WorkerCore<FakeSessionIO>.idleCheckMs, "ended at \(ended) ms")
        #expect(session.isEnding)
        #expect(session.endCause == .idleTimeout)
        #expect(io.stats.sessionsEndedByIdleTimeout.value == 1)
        // The mirror, its send still queued, flushes and shuts down as after any end.
        io.flushSends(.mirror(0))
        #expect(io.hasPending(.shutdown, .mirror(0)))
        finish(io)
        #expect(!session.isActive)
        #expect(io.sent(to: .mirror(0)) == request)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        io.expectQuiescent()
    }

    @Test("idleTimeoutMs 0 never ends a session")
    func idleTimeoutOff() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, idleTimeoutMs: 0))
        let session = try #require(io.start())
        io.connectAll()
        io.context.nowMs = 1 << 40
        io.workerTick()
        io.context.nowMs += 1 << 20
        io.workerTick()
        #expect(!session.isEnding)
        finish(io)
        io.expectQuiescent()
    }

    /// Our backlog was empty, but the kernel still held bytes the mirror had
    /// not acknowledged when the linger ended: it did not keep up either.
    @Test("a mirror whose kernel still holds unacknowledged bytes when its linger ends is cut for lag")
    func lingerEndsWithUnacknowledgedBytes() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 2, lingerMs: 2_000))
        io.context.nowMs = 1_000
        let session = try #require(io.start())
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(800, seed: 2))
        io.flushSends(.main)
        io.flushSends(.mirror(0))
        io.flushSends(.mirror(1))
        io.completeEOF(.client)
        io.completeShutdown(.main)
        io.completeShutdown(.mirror(0))
        io.completeShutdown(.mirror(1))
        io.completeEOF(.main)
        io.completeShutdown(.client)
        #expect(session.isEnding && session.isActive, "both mirrors are yet to send their EOF")
        // Mirror 0 has acknowledged everything; 300 bytes wait in mirror 1's kernel send queue.
        io.unacknowledgedBytes[try #require(io.record(.mirror(1))).fd] = 300
        io.context.nowMs = 3_000
        io.tickAll()
        #expect(io.stats.mirrors[0].sessionsCutForLag.value == 0)
        #expect(io.stats.mirrors[0].bytesMissed.value == 0)
        #expect(io.stats.mirrors[1].sessionsCutForLag.value == 1)
        #expect(io.stats.mirrors[1].bytesMissed.value == 300)
        io.completeCancelled()
        #expect(!session.isActive)
        #expect(io.lastEnded?.mirrorMissing == [false, true])
        io.expectQuiescent()
    }

    @Test("a completion for an ended session's tag is recognised as stale, even after the slot is reused")
    func staleCompletions() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1), sessions: 2)
        let first = try #require(io.start())
        let firstKey = SessionKey(first)
        io.connectAll()
        let oldRecv = try #require(io.pendingOp(.recv, .client)).tag
        let oldSend = CompletionTag(kind: OperationKind.send.rawValue, leg: 1,
                                    generation: firstKey.generation, session: firstKey.index)
        finish(io)
        #expect(!first.isActive)
        #expect(io.table.session(for: oldRecv) == nil, "ended, not yet reused")

        let second = try #require(io.start())
        #expect(second === first, "the table reuses the slot")
        #expect(second.generation == firstKey.generation &+ 1)
        io.connectAll()
        let newRecv = try #require(io.pendingOp(.recv, .client)).tag
        #expect(newRecv.session == oldRecv.session && newRecv.generation != oldRecv.generation)
        #expect(io.table.session(for: newRecv) === second)
        #expect(io.table.session(for: oldRecv) == nil)
        #expect(io.table.session(for: oldSend) == nil)
        let beyond = CompletionTag(kind: OperationKind.recv.rawValue, leg: 0, generation: newRecv.generation,
                                   session: UInt32(io.table.capacity))
        #expect(io.table.session(for: beyond) == nil)

        // A late completion of the old recv that took a slot: the slot goes straight back.
        let requestsBefore = io.requests.count
        let slot = try #require(io.freeSlots.last)
        io.takeFreeSlotForTest(slot)
        io.dispatch(tag: oldRecv, result: 512, selectedBuffer: slot)
        io.dispatch(tag: oldSend, result: 100, selectedBuffer: nil)
        #expect(io.staleCompletions == 2)
        #expect(io.freeSlots.contains(slot))
        #expect(io.requests.count == requestsBefore, "the new session did nothing")
        #expect(io.hasPending(.recv, .client), "the new session's recv is untouched")
        #expect(io.stats.bytesClientToMain.value == 0)
        finish(io)
        io.expectQuiescent()
    }

    @Test("a dry pool: recv gets ENOBUFS, the session waits, resumes, and loses no byte")
    func dryPool() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, readAheadChunks: 2), slotCount: 2)
        let session = try #require(io.start())
        io.connectAll()
        let one = TestBytes.random(100, seed: 1)
        let two = TestBytes.random(200, seed: 2)
        io.completeRecv(.client, one)
        io.completeRecv(.client, two)
        #expect(io.freeSlots.isEmpty)
        let reply = TestBytes.random(300, seed: 3)
        #expect(io.completeRecv(.main, reply) == -ENOBUFS)
        #expect(session.waitingForBuffers)
        #expect(io.waiters == [session.index])
        #expect(io.stats.poolExhausted.value == 1)
        #expect(!io.hasPending(.recv, .main))
        io.completeSend(.main)
        #expect(io.freeSlots.count == 1)
        #expect(!io.hasPending(.recv, .client), "no read while waiting for slots")
        io.resumeWaiters()
        #expect(!session.waitingForBuffers)
        #expect(io.hasPending(.recv, .main) && io.hasPending(.recv, .client))
        #expect(io.completeRecv(.main, reply) == 300)
        io.flushAllSends()
        finish(io)
        #expect(io.sent(to: .main) == one + two)
        #expect(io.sent(to: .client) == reply)
        io.expectQuiescent()
    }

    @Test("session table: take, free and capacity")
    func sessionTable() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1), sessions: 3)
        #expect(io.table.capacity == 3 && io.table.freeCount == 3)
        let sessions = (0..<3).compactMap { _ in io.start() }
        #expect(sessions.count == 3)
        #expect(Set(sessions.map(\.index)) == [0, 1, 2])
        #expect(io.table.activeCount == 3)
        #expect(io.start() == nil, "the table is full")
        finish(io)
        #expect(io.table.activeCount == 0 && io.table.freeCount == 3)
        #expect(io.stats.sessionsCompleted.value == 3)
        io.expectQuiescent()
    }

    /// Regression: a session whose client and main receives both find the
    /// pool dry must ask to be resumed once. The worker's waiter ring holds
    /// one entry per session; duplicates would fill it, later requests would
    /// be dropped, and a dropped session would never be resumed.
    @Test("one wait for slots asks waitForBuffers once, even when both receives find the pool dry")
    func waitForBuffersOncePerWait() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 0, readAheadChunks: 2), slotCount: 2, sessions: 2)
        // Another session holds both slots (its main does not take its bytes yet).
        let holder = try #require(io.start())
        let holderKey = SessionKey(holder)
        io.connectAll(holderKey)
        io.completeRecv(.client, TestBytes.text("a"), holderKey)
        io.completeRecv(.client, TestBytes.text("b"), holderKey)
        #expect(io.freeSlots.isEmpty)
        let session = try #require(io.start())
        io.connectAll()
        #expect(io.completeRecv(.client, TestBytes.text("c")) == -ENOBUFS)
        #expect(io.completeRecv(.main, TestBytes.text("d")) == -ENOBUFS)
        #expect(session.waitingForBuffers)
        #expect(io.stats.poolExhausted.value == 2)
        #expect(io.waitForBuffersCalls == 1, "asked \(io.waitForBuffersCalls) times for one wait")
        #expect(io.waiters == [session.index], "waiters \(io.waiters)")
        io.flushAllSends(holderKey)
        io.resumeWaiters()
        #expect(io.completeRecv(.client, TestBytes.text("c")) == 1)
        #expect(io.completeRecv(.main, TestBytes.text("d")) == 1)
        finish(io)
        #expect(io.sent(to: .main) == TestBytes.text("c"))
        #expect(io.sent(to: .client) == TestBytes.text("d"))
        io.expectQuiescent()
    }

    /// Regression: `abort` drops a mirror's queued bytes; they count as
    /// missed, so bytes sent plus missed always equal the client's bytes.
    @Test("abort counts a mirror's dropped backlog as missed")
    func abortCountsDroppedBacklog() throws {
        let io = try FakeSessionIO(limits: testLimits(mirrors: 1))
        try #require(io.start() != nil)
        io.connectAll()
        io.completeRecv(.client, TestBytes.random(100, seed: 1))
        io.flushSends(.main)
        io.completeRecv(.client, TestBytes.random(200, seed: 2))
        io.flushSends(.main)
        // The mirror took nothing yet: 300 bytes in its backlog.
        io.abort()
        io.completeCancelled()
        #expect(io.sent(to: .mirror(0)).isEmpty)
        let stats = io.stats.mirrors[0]
        #expect(stats.bytesSent.value + stats.bytesMissed.value == 300,
                "sent \(stats.bytesSent.value) + missed \(stats.bytesMissed.value) of 300 client bytes")
        io.expectQuiescent()
    }

    // MARK: - Errors at every stage

    private static let faults: [(OperationKind, Leg, Int32, Session.EndCause)] = [
        (.recv, .client, ECONNRESET, .clientError),
        (.send, .client, EPIPE, .clientError),
        (.shutdown, .client, ENOTCONN, .completed),
        (.connect, .main, ECONNREFUSED, .mainConnectFailure),
        (.connect, .main, ECANCELED, .mainConnectFailure),
        (.recv, .main, ECONNRESET, .mainError),
        (.send, .main, ECONNRESET, .mainError),
        (.shutdown, .main, ENOTCONN, .completed),
        (.connect, .mirror(0), ECONNREFUSED, .completed),
        (.connect, .mirror(0), ECANCELED, .completed),
        (.send, .mirror(0), EPIPE, .completed),
        (.send, .mirror(0), EAGAIN, .completed),
        (.discard, .mirror(0), ECONNRESET, .completed),
        (.shutdown, .mirror(0), ENOTCONN, .completed),
    ]

    @Test("a failure injected at the Nth operation of each kind on each leg keeps every invariant",
          arguments: 0..<14)
    func faultAtEveryStage(faultIndex: Int) throws {
        let (kind, peer, code, expectedCause) = Self.faults[faultIndex]
        var fired = 0
        for nth in 0..<40 {
            var firedThisRound = 0
            for seed in 1...3 {
                let io = try FakeSessionIO(limits: testLimits(mirrors: 2), slotCount: 64)
                let simulation = Simulation(io: io, seed: UInt64(nth * 10 + seed))
                simulation.plan = FaultPlan(kind: kind, peer: peer, nth: nth, result: -code)
                var script = PeerScript()
                script.client = TestBytes.random(3_000, seed: UInt64(seed))
                script.main = TestBytes.random(2_000, seed: UInt64(seed + 50))
                script.chunkMax = 700
                simulation.start(script)
                let key = try #require(io.lastKey)
                let done = simulation.run()
                #expect(done, "stuck: \(simulation.plan!) seed \(seed); pending \(io.pending)")
                io.expectQuiescent()
                let ended = try #require(io.ended[key])
                guard simulation.plan!.fired else {
                    #expect(ended.cause == .completed)
                    continue
                }
                fired += 1
                firedThisRound += 1
                #expect(ended.cause == expectedCause, "\(simulation.plan!) seed \(seed)")
                let toMain = io.sent(to: .main)
                let toClient = io.sent(to: .client)
                if expectedCause == .completed {
                    #expect(toMain == script.client, "\(simulation.plan!)")
                    #expect(toClient == script.main, "\(simulation.plan!)")
                } else {
                    #expect(toMain.isPrefix(of: script.client))
                    #expect(toClient.isPrefix(of: script.main))
                }
                for mirror in 0..<2 {
                    let stream = io.sent(to: .mirror(mirror))
                    #expect(stream.isPrefix(of: script.client), "mirror\(mirror) got a stream with a hole")
                    if !ended.mirrorMissing[mirror] && expectedCause == .completed {
                        #expect(stream == script.client, "\(simulation.plan!) mirror\(mirror)")
                    }
                    let stats = io.stats.mirrors[mirror]
                    #expect(stats.bytesSent.value + stats.bytesMissed.value == io.stats.bytesClientToMain.value,
                            "every client byte is either sent to or missed by mirror\(mirror)")
                }
                if peer.isMirror, kind == .connect {
                    #expect(ended.mirrorMissing[0])
                }
            }
            if firedThisRound == 0 { break }
        }
        #expect(fired > 0, "the fault was never injected")
    }
}
