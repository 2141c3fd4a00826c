import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Duplicator
import LoadTools
import Platform

/// The promises (README.md; docs/architecture.md, "The path of one message") over real loopback sockets, on io_uring and on epoll.
@Suite("Integration: the proxy's promises", .timeLimit(.minutes(6)))
struct IntegrationTests {
    /// Promises 1 and 2 (and 3 for healthy mirrors): 50 concurrent sessions,
    /// random payloads up to several MiB written in random pieces; the client
    /// gets exactly main's echo, main and every mirror exactly the client's bytes.
    /// On each IO path (`IOPath`): with `--zerocopy on`, every send is
    /// zero-copy and its slots are held until the kernel's notification;
    /// `auto` sends none towards this host.
    @Test("exact streams to main, client and every mirror", arguments: IOPath.all, [1, 3])
    func exactStreams(path: IOPath, mirrorCount: Int) throws {
        let (backend, zeroCopy) = (path.backend, path.zeroCopy)
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirrors = try (0..<mirrorCount).map { _ in try startServer(.sink) }
        defer { mirrors.forEach { $0.stop() } }
        // These debug-build sinks hash every byte and share 2 cores with 50
        // sessions: give healthy mirrors room to lag (pool, linger) without a cut.
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: mirrors.map(\.boundPort)) {
            $0.poolSlots = 16384
            $0.backlogBytesMax = 64 << 20
            $0.backlogChunksMax = 4096
            $0.mirrorLingerMs = 10_000
            $0.zeroCopy = zeroCopy
        }
        defer { proxy.shutdown() }

        let sessions = 50
        let payloads = (0..<sessions).map { index -> [UInt8] in
            var generator = SeededGenerator(seed: UInt64(1000 * mirrorCount + index))
            // Mostly small, some several MiB: the cube skews towards small sizes.
            let fraction = Double.random(in: 0...1, using: &generator)
            return generator.bytes(Int(fraction * fraction * fraction * 5_000_000))
        }
        #expect(try echoSessions(sessions, port: proxy.port) { payloads[$0] } == [])

        let expected = streamSignatures(payloads)
        #expect(receivedStreams(main, count: sessions) == expected)
        for (index, mirror) in mirrors.enumerated() {
            #expect(receivedStreams(mirror, count: sessions) == expected, "mirror \(index)")
            #expect(proxy.mirrorTotal(index, { $0.sessionsCutForLag.value }) == 0)
            #expect(proxy.mirrorTotal(index, { $0.bytesMissed.value }) == 0)
        }
        #expect(eventually { proxy.activeSessions == 0 })
        #expect(proxy.total { $0.sessionsCompleted.value } == UInt64(sessions))
        expectZeroCopyAccounting(proxy, zeroCopy)
    }

    /// Promise 3 with coalesced mirror sends: many small client writes, so
    /// several receives wait in a mirror's backlog and go out as one gathered
    /// sendmsg; every mirror still gets exactly the client's bytes. (Over
    /// loopback to a sink that keeps up, a short send is rare and not seen
    /// from here: short gathered sends are shown by MirrorBatchTests (sans-IO)
    /// and, over a real socket, by EpollWorkerTests.shortSendParks and
    /// gatheredSend.)
    @Test("coalesced mirror sends: exact streams from many small writes", arguments: IOPath.all, [0, 1_000, 5_000])
    func coalescedMirrorSends(path: IOPath, delayUs: Int) throws {
        let (backend, zeroCopy) = (path.backend, path.zeroCopy)
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirrors = try (0..<2).map { _ in try startServer(.sink) }
        defer { mirrors.forEach { $0.stop() } }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: mirrors.map(\.boundPort)) {
            $0.poolSlots = 16384
            $0.backlogBytesMax = 64 << 20
            $0.backlogChunksMax = 4096
            $0.mirrorLingerMs = 10_000
            $0.mirrorBatchBytes = 16 * 1024
            $0.mirrorBatchDelayUs = delayUs
            $0.zeroCopy = zeroCopy
        }
        defer { proxy.shutdown() }

        let sessions = 20
        let payloads = (0..<sessions).map { index -> [UInt8] in
            var generator = SeededGenerator(seed: UInt64(7_000 + delayUs + index))
            return generator.bytes(Int.random(in: 1...400_000, using: &generator))
        }
        #expect(try echoSessions(sessions, port: proxy.port, pieceMax: 300) { payloads[$0] } == [])
        let expected = streamSignatures(payloads)
        #expect(receivedStreams(main, count: sessions) == expected)
        let total = UInt64(payloads.reduce(0) { $0 + $1.count })
        for (index, mirror) in mirrors.enumerated() {
            #expect(receivedStreams(mirror, count: sessions) == expected, "mirror \(index)")
            #expect(proxy.mirrorTotal(index, { $0.bytesMissed.value }) == 0)
            #expect(proxy.mirrorTotal(index, { $0.bytesSent.value }) == total)
            // Each send carried more than one 300-byte write on average: they were coalesced.
            let sends = proxy.mirrorTotal(index, { $0.sends.value })
            #expect(sends > 0 && total / sends > 300, "mirror \(index): \(total) bytes in \(sends) sends")
        }
        #expect(eventually { proxy.activeSessions == 0 })
        expectZeroCopyAccounting(proxy, zeroCopy)
    }

    /// After every session: each slot is back in the pool, those that zero-copy
    /// sends read included (they come back with the kernel's notification);
    /// `on` sent zero-copy, and the kernel copied each (loopback), while
    /// `auto` sent none towards this host.
    private func expectZeroCopyAccounting(_ proxy: Proxy, _ zeroCopy: ZeroCopyMode,
                                          sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(eventually { proxy.total { $0.poolSlotsInUse.value } == 0 },
                "\(proxy.total { $0.poolSlotsInUse.value }) slots still in use", sourceLocation: sourceLocation)
        let sends = proxy.total { $0.zeroCopySends.value }
        let copied = proxy.total { $0.zeroCopyCopied.value }
        switch zeroCopy {
        case .on:
            #expect(sends > 0 && copied > 0 && copied <= sends, "\(sends) zero-copy sends, \(copied) copied",
                    sourceLocation: sourceLocation)
        case .auto, .off:
            #expect(sends == 0 && copied == 0, "\(sends) zero-copy sends towards loopback", sourceLocation: sourceLocation)
        }
    }

    /// Each kind of broken mirror, alone beside a healthy one or as the only mirror.
    static let brokenMirrorCases: [(kind: String, allBroken: Bool)] =
        ["refuses", "closes at once", "resets mid-stream", "never reads", "black-holes its connect"].flatMap { kind in
            [false, true].map { (kind, $0) }
        }

    /// Promise 4: each kind of broken mirror leaves the client's session whole.
    @Test("a broken mirror never hurts the client",
          arguments: Config.Backend.tested, Self.brokenMirrorCases)
    func brokenMirror(backend: Config.Backend, brokenCase: (kind: String, allBroken: Bool)) throws {
        try brokenMirror(backend: backend, kind: brokenCase.kind, allBroken: brokenCase.allBroken, zeroCopy: .auto)
    }

    /// The same with every send zero-copy: a mirror cut while the kernel
    /// still holds its sends' slots gives them back with the notifications.
    /// Mirrors that never read are all the mirrors here: beside them, the
    /// healthy (debug-build, hashing) sinks could not take 64 MiB within
    /// their linger on a loaded machine, and zero copy costs more CPU.
    @Test("a broken mirror never hurts the client, with --zerocopy on",
          arguments: [("closes at once", false), ("resets mid-stream", false), ("never reads", true)])
    func brokenMirrorZeroCopy(kind: String, allBroken: Bool) throws {
        try brokenMirror(backend: .ioUring, kind: kind, allBroken: allBroken, zeroCopy: .on)
    }

    private func brokenMirror(backend: Config.Backend, kind: String, allBroken: Bool, zeroCopy: ZeroCopyMode) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        // Each healthy mirror has a server (a thread) of its own, as fast as main's.
        let healthy = try (0..<(allBroken ? 0 : 2)).map { _ in try startServer(.sink) }
        defer { healthy.forEach { $0.stop() } }
        var cleanup: [() -> Void] = []
        defer { cleanup.forEach { $0() } }
        // One broken mirror of three (the others healthy), or all three broken.
        let brokenPorts = try (0..<(allBroken ? 3 : 1)).map { _ in try brokenMirrorPort(kind, cleanup: &cleanup) }
        let healthyPorts = healthy.map(\.boundPort)
        // Room for the healthy mirrors (this debug build's sink hashes every
        // byte, on a busy machine) to lag without being cut.
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: brokenPorts + healthyPorts) {
            $0.mirrorConnectTimeoutMs = 1500
            $0.backlogBytesMax = 32 << 20
            $0.backlogChunksMax = 4096
            $0.poolSlots = 16384
            $0.mirrorLingerMs = 10_000
            $0.zeroCopy = zeroCopy
        }
        defer { proxy.shutdown() }

        // The first reply must not wait for a broken mirror (not even its connect timeout).
        let connection = try TestConnection(port: proxy.port)
        let start = monotonicSeconds()
        let ping = connection.exchange(Array("ping\n".utf8), shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: 5)
        let firstReplySeconds = monotonicSeconds() - start
        #expect(ping.received == Array("ping\n".utf8))
        #expect(firstReplySeconds < 0.5, "first reply took \(firstReplySeconds)s")

        var generator = SeededGenerator(seed: 7)
        // A mirror that never reads first fills the kernel's buffers (a few
        // MiB of send queue and receive window) before our backlog grows:
        // send enough to pass both.
        let payload = generator.bytes(kind == "never reads" ? 64 << 20 : 4 << 20)
        let (received, end) = connection.exchange(payload, timeoutSeconds: 30)
        #expect(end == .eof)
        #expect(received == payload)
        let whole = Array("ping\n".utf8) + payload
        for server in healthy {
            #expect(receivedStreams(server, count: 1) == [StreamSignature(whole): 1])
        }
        #expect(eventually { proxy.activeSessions == 0 })
        #expect(proxy.total { $0.sessionsCompleted.value } == 1)
        for index in brokenPorts.indices {
            let failures = proxy.mirrorTotal(index) { $0.connectFailures.value + $0.connectTimeouts.value + $0.errors.value + $0.sessionsCutForLag.value }
            #expect(failures >= 1, "broken mirror \(index)'s failure was counted")
            #expect(proxy.mirrorTotal(index) { $0.bytesMissed.value } > 0)
        }
        expectZeroCopyAccounting(proxy, zeroCopy)
    }

    private func brokenMirrorPort(_ kind: String, cleanup: inout [() -> Void]) throws -> UInt16 {
        switch kind {
        case "refuses":
            let refusing = RefusingPort()
            cleanup.append { _ = refusing }
            return refusing.port
        case "closes at once":
            let server = try FaultServer.start(.closeAtOnce)
            cleanup.append { server.stop() }
            return server.port
        case "resets mid-stream":
            let server = try FaultServer.start(.resetAfterReading(100_000))
            cleanup.append { server.stop() }
            return server.port
        case "never reads":
            let server = try startServer(.stall)
            cleanup.append { server.stop() }
            return server.boundPort
        default:
            let server = try startServer(.blackhole)
            cleanup.append { server.stop() }
            return server.boundPort
        }
    }

    /// Promise 3 at the settings a user runs: the binary with no flag but
    /// the addresses (its own pool, backlog, linger and thread count), a busy
    /// closed-loop client, and two healthy mirrors. Neither is ever cut, and
    /// each gets exactly the bytes main got, session by session.
    @Test("healthy mirrors at the default settings are never cut and get every session's exact stream", arguments: Config.Backend.tested)
    func healthyMirrorsAtDefaults(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirrors = try (0..<2).map { _ in try startServer(.echo) }
        defer { mirrors.forEach { $0.stop() } }
        let metricsPort = freePort()
        let proxy = try ProxyProcess(backend: backend, ["-f", "127.0.0.1:\(main.boundPort)", "--metrics", "127.0.0.1:\(metricsPort)"]
                                        + mirrors.flatMap { ["-m", "127.0.0.1:\($0.boundPort)"] }, port: freePort())
        let client = try LoadClient(address: LoadAddress(host: "127.0.0.1", port: proxy.port), connections: 10,
                                    messageSizeBytes: 1024, durationSeconds: 3)
        let result = try client.run()
        #expect(result.errors == 0, "\(result.firstErrorDescription ?? "")")
        #expect(result.requests >= 1000)
        // Every session has ended (its mirrors' connections closed after their linger).
        let sessions = Int(main.connectionsAccepted)
        let mainStreams = receivedStreams(main, count: sessions)
        #expect(mainStreams.values.reduce(0, +) == sessions)
        for (index, mirror) in mirrors.enumerated() {
            #expect(receivedStreams(mirror, count: sessions) == mainStreams, "mirror \(index)")
        }
        let metrics = try #require(scrape(metricsPort, timeoutSeconds: 5))
        let cuts = metrics.split(separator: "\n").filter {
            ($0.hasPrefix("duplicator_mirror_lag_cuts_total{") || $0.hasPrefix("duplicator_mirror_pool_share_cuts_total{"))
        }
        #expect(cuts.count == 4, "\(cuts)")
        #expect(cuts.allSatisfy { $0.hasSuffix(" 0") }, "\(cuts)")
        #expect(proxy.signalAndWait(SIGTERM) == 0)
    }

    /// A graceful stop cancels each worker's accept and lets the live session
    /// finish; every completion on the way is one the workers know (an unknown
    /// one is counted: a bug).
    /// With `--zerocopy on`, the workers also wait for their sends' notifications.
    @Test("a graceful stop finishes the live session and meets no unknown completion", arguments: IOPath.all)
    func gracefulStopCompletions(path: IOPath) throws {
        let zeroCopy = path.zeroCopy
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try startProxy(backend: path.backend, main: main.boundPort, mirrors: []) {
            $0.threads = 2
            $0.zeroCopy = zeroCopy
        }
        defer { proxy.shutdown() }
        let connection = try TestConnection(port: proxy.port)
        let first = connection.exchange(Array("before ".utf8), shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: 7)
        #expect(first.received == Array("before ".utf8))
        proxy.stop()
        usleep(300_000)
        let rest = connection.exchange(Array("after".utf8), timeoutSeconds: 5)
        #expect(rest.received == Array("after".utf8) && rest.end == .eof)
        proxy.wait()
        #expect(proxy.total { $0.sessionsCompleted.value } == 1)
        #expect(proxy.total { $0.completionsUnknown.value } == 0)
        #expect((proxy.total { $0.zeroCopySends.value } > 0) == (zeroCopy == .on))
    }

    /// Promise 4 and 3: a mirror that never reads cannot slow a 64 MiB stream,
    /// and is cut for the session once its backlog limit is passed.
    @Test("a stalled mirror does not slow a 64 MiB stream and is cut", arguments: Config.Backend.tested)
    func stalledMirrorDoesNotSlow(backend: Config.Backend) throws {
        let main = try startServer(.sink)
        defer { main.stop() }
        let stalled = try startServer(.stall)
        defer { stalled.stop() }
        var generator = SeededGenerator(seed: 64)
        let payload = generator.bytes(64 << 20)

        func timedUpload(mirrors: [UInt16]) throws -> (seconds: Double, proxy: Proxy) {
            let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: mirrors)
            let connection = try TestConnection(port: proxy.port)
            let start = monotonicSeconds()
            let (_, end) = connection.exchange(payload, timeoutSeconds: 60)
            let seconds = monotonicSeconds() - start
            #expect(end == .eof)
            return (seconds, proxy)
        }
        // Interleaved rounds, the fastest of each kind: on a shared machine
        // one slow round says little. Once cut, the mirror costs nothing;
        // before, it shares the client's buffers, never copies them.
        var baseline = Double.infinity
        var mirroredSeconds = Double.infinity
        var mirrored: Proxy?
        for round in 0..<3 {
            let alone = try timedUpload(mirrors: [])
            alone.proxy.shutdown()
            baseline = min(baseline, alone.seconds)
            let beside = try timedUpload(mirrors: [stalled.boundPort])
            mirroredSeconds = min(mirroredSeconds, beside.seconds)
            if round == 0 { mirrored = beside.proxy } else { beside.proxy.shutdown() }
        }
        let first = try #require(mirrored)
        defer { first.shutdown() }
        // The whole suite runs beside this test on two cores: a bound that
        // noise cannot break, still far below what a mirror able to hold the
        // client back would cost (the stream would never end).
        #expect(mirroredSeconds < baseline * 2 + 0.5,
                "with a stalled mirror \(mirroredSeconds)s, without \(baseline)s (fastest of 3 rounds each)")
        let streams = receivedStreams(main, count: 6)
        #expect(streams == [StreamSignature(payload): 6])
        #expect(first.mirrorTotal(0) { $0.sessionsCutForLag.value } == 1)
        #expect(first.mirrorTotal(0) { $0.bytesMissed.value } > 0)
        let stalledRecords = stalled.connectionRecords()
        #expect(stalledRecords.count == 3)
    }

    /// 64 MiB each way, checked by digest on the client, main and two mirrors.
    /// The test's sink servers are slower than its echo path (a debug build
    /// hashing every byte), so the mirrors get room to lag the whole stream
    /// (a 256 MiB pool, 64 MiB of backlog each) and time to catch up after it.
    @Test("64 MiB through main and two mirrors, exact by digest", arguments: Config.Backend.tested)
    func largeStream(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirrors = try (0..<2).map { _ in try startServer(.sink) }
        defer { mirrors.forEach { $0.stop() } }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: mirrors.map(\.boundPort)) {
            $0.backlogBytesMax = 64 << 20
            $0.backlogChunksMax = 4096
            $0.poolSlots = 16384
            $0.mirrorLingerMs = 30_000
        }
        defer { proxy.shutdown() }
        var generator = SeededGenerator(seed: 6464)
        let payload = generator.bytes(64 << 20)
        let connection = try TestConnection(port: proxy.port)
        let (received, end) = connection.exchange(payload, timeoutSeconds: 90)
        #expect(end == .eof)
        #expect(received.count == payload.count)
        #expect(FNV1a64.digest(of: received) == FNV1a64.digest(of: payload))
        let expected = [StreamSignature(payload): 1]
        #expect(receivedStreams(main, count: 1) == expected)
        for mirror in mirrors { #expect(receivedStreams(mirror, count: 1) == expected) }
    }

    /// Promise 5: client EOF travels to main as SHUT_WR and main's reply still comes back.
    @Test("half-close: the client's EOF reaches main and main's whole reply comes back", arguments: Config.Backend.tested)
    func clientHalfClose(backend: Config.Backend) throws {
        var generator = SeededGenerator(seed: 5)
        let reply = generator.bytes(3 << 20)
        // Main reads until the client's EOF (readBytes beyond what is sent), then replies and closes.
        let main = try FaultServer.start(.replyThenClose(readBytes: Int.max, reply: reply, reset: false))
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.boundPort])
        defer { proxy.shutdown() }
        let connection = try TestConnection(port: proxy.port)
        let request = Array("GET / HTTP/1.0\r\n\r\n".utf8)
        let (received, end) = connection.exchange(request, shutdownAfterSending: true, timeoutSeconds: 20)
        #expect(end == .eof)
        #expect(received == reply)
        // Main replied because it saw the client's EOF, not because its read
        // timed out (2 s without a byte): the half-close reached it.
        let mainSawEOF = main.readSawEOF.load(ordering: .acquiring)
        let mainRead = main.bytesRead.load(ordering: .relaxed)
        #expect(mainSawEOF, "main never saw the client's EOF")
        #expect(mainRead == request.count)
        #expect(receivedStreams(mirror, count: 1) == [StreamSignature(request): 1])
    }

    @Test("half-close: main's EOF reaches the client after its whole reply", arguments: Config.Backend.tested)
    func mainHalfClose(backend: Config.Backend) throws {
        var generator = SeededGenerator(seed: 6)
        let reply = generator.bytes(1 << 20)
        let main = try FaultServer.start(.replyThenClose(readBytes: 4, reply: reply, reset: false))
        defer { main.stop() }
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [])
        defer { proxy.shutdown() }
        let connection = try TestConnection(port: proxy.port)
        // The client does not shut down its side: main's close alone ends the reply.
        let (received, end) = connection.exchange(Array("ping".utf8), shutdownAfterSending: false, timeoutSeconds: 20)
        #expect(end == .eof)
        #expect(received == reply)
    }

    /// The FINs of half-closes go from the worker's own thread. The kernel
    /// runs a ring's shutdown request on an io-wq thread, which it starts in
    /// the process that asked and names iou-wrk-<tid>: a wakeup and a switch
    /// per FIN, two per session that closes (about 0.9 context switches per
    /// request of a connection-per-request load). The proxy runs as a process
    /// of its own so that no other ring of the tests starts one.
    @Test("half-close: the FINs go from the worker's thread, no io_uring worker thread is started")
    func finsFromTheWorkersThread() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let proxy = try ProxyProcess(backend: .ioUring, ["-f", "127.0.0.1:\(main.boundPort)", "--threads", "1"],
                                     port: freePort())
        let failures = try echoSessions(20, port: proxy.port) { Array("session \($0)\n".utf8) }
        #expect(failures.isEmpty, "\(failures)")
        // Idle io-wq threads exit after 5 s; these sessions ended just now.
        let names = proxy.threads.map(\.name)
        #expect(names.contains { $0.hasPrefix("worker") }, "\(names)")
        #expect(!names.contains { $0.hasPrefix("iou-wrk") }, "\(names)")
    }

    /// A mirror's replies wake the worker once per `mirrorDiscardBatchBytes`
    /// (SO_RCVLOWAT on its socket), not once per reply; the replies still
    /// waiting when the session ends, and the mirror's EOF, are discarded at once.
    @Test("mirror replies are discarded in batches, every byte of them", arguments: Config.Backend.tested, [0, 64 * 1024])
    func mirrorDiscardBatch(backend: Config.Backend, batchBytes: Int) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.echo)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort]) {
            $0.mirrorDiscardBatchBytes = batchBytes
            $0.mirrorLingerMs = 20_000
            // One send per message, so the echo mirror replies once per message.
            $0.mirrorBatchBytes = 0
        }
        defer { proxy.shutdown() }
        let connection = try TestConnection(port: proxy.port)
        // 400 round trips of 100 bytes: 40 000 bytes of mirror replies, less than one batch.
        let rounds = 400
        let message = [UInt8](repeating: 0x61, count: 99) + Array("\n".utf8)
        for round in 0..<rounds {
            let (received, _) = connection.exchange(message, shutdownAfterSending: false, timeoutSeconds: 5,
                                                    expectBytes: message.count)
            try #require(received == message, "round \(round)")
        }
        let ended = connection.exchange([], shutdownAfterSending: true, timeoutSeconds: 10)
        #expect(ended.end == .eof)
        // The mirror's EOF after ours ends the session, long before the 20 s linger.
        let start = monotonicSeconds()
        #expect(eventually(timeoutSeconds: 10) { proxy.activeSessions == 0 })
        #expect(monotonicSeconds() - start < 10)
        #expect(proxy.mirrorTotal(0) { $0.replyBytes.value } == UInt64(rounds * message.count))
        #expect(proxy.mirrorTotal(0) { $0.sessionsCutForLag.value + $0.bytesMissed.value + $0.errors.value } == 0)
        let discards = proxy.mirrorTotal(0) { $0.discards.value }
        if batchBytes == 0 {
            #expect(discards >= UInt64(rounds / 4), "one discard per reply or so: \(discards)")
        } else {
            // The replies to the first kept turns (--mirror-turns) wake the discard one by one; the rest once, at the end.
            #expect(discards <= 3 + UInt64(Config(listen: endpoint(1), main: endpoint(2), mirrors: []).mirrorTurns),
                    "replies discarded once, at the end: \(discards)")
        }
    }

    /// A mirror still reading when its linger ends did not keep up, even
    /// with our backlog empty: the kernel still holds bytes it has not
    /// acknowledged, and as it replies after our close, TCP resets it and
    /// drops them. It is cut for lag and those bytes count as missed; the
    /// client never notices.
    @Test("a mirror still reading when its linger ends is cut, and what it missed is counted", arguments: Config.Backend.tested)
    func slowMirrorAfterLinger(backend: Config.Backend) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        // 128 KiB, which the kernel takes at once (into the mirror's receive
        // buffer), read 2 KiB every 10 ms with a byte of reply each: about
        // 0.6 s, three lingers.
        let mirror = try FaultServer.start(.slowReader(bytesPerRead: 2048, intervalMs: 10))
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.port]) {
            $0.mirrorLingerMs = 200
            // One send per receive, as this test was written for: with batched
            // sends the loopback window often took all 128 KiB at once, so at
            // the linger's end nothing was unacknowledged, the mirror was
            // (rightly) not cut, and it read the whole stream. The accounting
            // under test needs bytes the mirror's kernel has not taken.
            $0.mirrorBatchBytes = 0
        }
        defer { proxy.shutdown() }
        var generator = SeededGenerator(seed: 11)
        let payload = generator.bytes(128 << 10)
        let connection = try TestConnection(port: proxy.port)
        let (received, end) = connection.exchange(payload, timeoutSeconds: 30)
        #expect(end == .eof)
        #expect(received == payload)
        #expect(eventually(timeoutSeconds: 10) { proxy.activeSessions == 0 })
        #expect(mirror.received.load(ordering: .relaxed) < payload.count, "the mirror was still reading")
        #expect(eventually(timeoutSeconds: 20) { mirror.ended.load(ordering: .acquiring) })
        let readInAll = mirror.received.load(ordering: .relaxed)
        let missed = proxy.mirrorTotal(0) { $0.bytesMissed.value }
        #expect(proxy.mirrorTotal(0) { $0.sessionsCutForLag.value } == 1)
        #expect(missed > 0)
        #expect(UInt64(readInAll) + missed >= UInt64(payload.count),
                "the mirror read \(readInAll) of \(payload.count) bytes; \(missed) counted as missed")
        #expect(proxy.total { $0.sessionsCompleted.value } == 1)
    }

    /// Promise 5: main refused or reset closes the client at once; others are still served.
    @Test("main refuses: the client is closed at once and the proxy serves the next client", arguments: Config.Backend.tested)
    func mainRefuses(backend: Config.Backend) throws {
        let refusing = RefusingPort()
        let proxy = try startProxy(backend: backend, main: refusing.port, mirrors: [])
        defer { proxy.shutdown() }
        let start = monotonicSeconds()
        let connection = try TestConnection(port: proxy.port)
        let (received, end) = connection.exchange(Array("hello".utf8), shutdownAfterSending: false, timeoutSeconds: 5)
        #expect(received.isEmpty)
        #expect(end != .timeout)
        #expect(monotonicSeconds() - start < 1)
        #expect(eventually { proxy.total { $0.sessionsEndedByMainConnectFailure.value } == 1 })

        // Main comes up on the same port: the next client is served.
        #expect(listen(refusing.fd, 16) == 0)
        let echo = try spawnEchoOnce(listener: refusing.fd)
        let next = try TestConnection(port: proxy.port)
        let (echoed, nextEnd) = next.exchange(Array("again".utf8), timeoutSeconds: 5)
        #expect(echoed == Array("again".utf8))
        #expect(nextEnd == .eof)
        echo.wait()
    }

    /// A reset drops what main's leg still queued for the client (as the
    /// kernel drops a reset socket's unread bytes): the client may get a
    /// prefix of the reply, never more, and learns of the end at once.
    @Test("main resets mid-reply: the client gets at most a prefix of the reply, and the end at once", arguments: Config.Backend.tested)
    func mainResets(backend: Config.Backend) throws {
        let main = try FaultServer.start(.replyThenClose(readBytes: 4, reply: Array(repeating: 0x61, count: 1000), reset: true))
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.boundPort])
        defer { proxy.shutdown() }
        let connection = try TestConnection(port: proxy.port)
        let start = monotonicSeconds()
        let (received, end) = connection.exchange(Array("ping".utf8), shutdownAfterSending: false, timeoutSeconds: 5)
        #expect(end != .timeout)
        #expect(monotonicSeconds() - start < 1)
        #expect(received.count <= 1000)
        #expect(received.allSatisfy { $0 == 0x61 })
        #expect(eventually { proxy.total { $0.sessionsEndedByMainError.value } == 1 })
        #expect(eventually { proxy.activeSessions == 0 })
    }

    @Test("a client that resets mid-send ends its session; main and mirror see a prefix", arguments: Config.Backend.tested)
    func clientResets(backend: Config.Backend) throws {
        let main = try startServer(.sink)
        defer { main.stop() }
        let mirror = try startServer(.sink)
        defer { mirror.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [mirror.boundPort])
        defer { proxy.shutdown() }
        var generator = SeededGenerator(seed: 9)
        let payload = generator.bytes(1 << 20)
        let connection = try TestConnection(port: proxy.port)
        _ = connection.exchange(payload, shutdownAfterSending: false, timeoutSeconds: 0.3)
        connection.reset()
        #expect(eventually { proxy.activeSessions == 0 })
        #expect(proxy.total { $0.sessionsEndedByClientError.value + $0.sessionsCompleted.value } == 1)
        for server in [main, mirror] {
            #expect(eventually { server.connectionRecords().first?.peerClosed == true })
            let record = try #require(server.connectionRecords().first)
            #expect(record.bytesReceived <= UInt64(payload.count))
            #expect(record.receivedDigest == FNV1a64.digest(of: payload.prefix(Int(record.bytesReceived))))
        }
    }
}

/// Accepts one connection on `listener` and echoes it until EOF, on a thread.
final class EchoOnce: Sendable {
    let done = Atomic<Bool>(false)
    func wait() { _ = eventually(timeoutSeconds: 5) { done.load(ordering: .acquiring) } }
}

func spawnEchoOnce(listener: Int32) throws -> EchoOnce {
    let echo = EchoOnce()
    try detachedThread {
        defer { echo.done.store(true, ordering: .releasing) }
        let fd = accept(listener, nil, nil)
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            _ = buffer.withUnsafeBytes { send(fd, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
        }
        close(fd)
    }
    return echo
}
