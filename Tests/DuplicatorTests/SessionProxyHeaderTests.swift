import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// The PROXY protocol in the session, sans-IO: the header the session puts
// before the client's bytes (--send-proxy), and the one it takes off them
// (--accept-proxy), driven through `FakeSessionIO`.

private func proxyLimits(mirrors: Int = 2, send: ProxyProtocol.Version? = nil, accept: Bool = false) -> SessionLimits {
    SessionLimits(mirrorCount: mirrors, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                  backlogBytesMax: 1 << 20, backlogChunksMax: 16, readAheadChunks: 2, mirrorLingerMs: 2_000,
                  sendProxy: send, acceptProxy: accept, proxyHeaderTimeoutMs: 3_000,
                  mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
}

private let client4 = ProxyAddresses(source: ProxyProtocolTests.address("192.0.2.10", 56324),
                                     destination: ProxyProtocolTests.address("198.51.100.1", 443))
private let client6 = ProxyAddresses(source: ProxyProtocolTests.address("2001:db8::7", 40001),
                                     destination: ProxyProtocolTests.address("2001:db8::1", 8080))

@Suite("Session: PROXY protocol")
struct SessionProxyHeaderTests {
    // MARK: - --send-proxy

    @Test("--send-proxy: main and every mirror get the same header first, then exactly the client's bytes",
          arguments: ProxyProtocol.Version.allCases)
    func headerIsPrepended(version: ProxyProtocol.Version) throws {
        let io = try FakeSessionIO(limits: proxyLimits(mirrors: 2, send: version))
        io.clientAddresses = client6
        try #require(io.start() != nil)
        #expect(io.addressQueries == 1)
        // Client bytes arrive before anyone connected: they queue behind the header.
        let first = TestBytes.random(300, seed: 1)
        io.completeRecv(.client, first)
        io.connectAll()
        let header = ProxyProtocolTests.encode(version, client6)
        for peer in [Leg.main, .mirror(0), .mirror(1)] {
            let sends = io.requests(.send, peer)
            #expect(sends.first?.fromSessionMemory == true, "\(peer): the header is sent first")
            #expect(sends.first?.bytes == header, "\(peer)")
        }
        // A short send of the header: the rest follows before any client byte.
        io.completeSend(.main, count: 5)
        #expect(io.pendingOp(.send, .main)?.bytes == Array(header[5...]))
        io.flushAllSends()
        let second = TestBytes.random(4000, seed: 2)
        io.completeRecv(.client, second)
        io.flushAllSends()
        for peer in [Leg.main, .mirror(0), .mirror(1)] {
            #expect(io.sent(to: peer) == header + first + second, "\(peer)")
        }
        #expect(io.stats.bytesClientToMain.value == UInt64(first.count + second.count), "the header is not client bytes")
        finish(io)
        #expect(io.lastEnded?.cause == .completed)
        io.expectQuiescent()
    }

    @Test("--send-proxy: a client that sends nothing still gets its header to main, before the FIN")
    func headerBeforeShutdown() throws {
        let io = try FakeSessionIO(limits: proxyLimits(mirrors: 1, send: .v1))
        io.clientAddresses = client4
        try #require(io.start() != nil)
        io.completeEOF(.client)
        io.connectAll()
        #expect(!io.hasPending(.shutdown, .main), "no FIN before the header")
        io.flushAllSends()
        #expect(io.hasPending(.shutdown, .main) && io.hasPending(.shutdown, .mirror(0)))
        #expect(io.sent(to: .main) == Array("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".utf8))
        #expect(io.sent(to: .mirror(0)) == io.sent(to: .main))
        finish(io)
        io.expectQuiescent()
    }

    @Test("--send-proxy: without the client's addresses, v1 says UNKNOWN and v2 LOCAL")
    func unknownAddresses() throws {
        for (version, expected) in [(ProxyProtocol.Version.v1, Array("PROXY UNKNOWN\r\n".utf8)),
                                    (.v2, ProxyProtocolTests.signature + [0x20, 0x00, 0x00, 0x00])] {
            let io = try FakeSessionIO(limits: proxyLimits(mirrors: 0, send: version))
            try #require(io.start() != nil)
            io.connectAll()
            io.flushAllSends()
            #expect(io.sent(to: .main) == expected)
            finish(io)
            io.expectQuiescent()
        }
    }

    // MARK: - --accept-proxy

    @Test("--accept-proxy: nothing is connected before the header; then main and mirrors get what followed it")
    func headerIsConsumed() throws {
        let io = try FakeSessionIO(limits: proxyLimits(mirrors: 2, accept: true))
        try #require(io.start() != nil)
        #expect(io.requests(.connect).isEmpty)
        #expect(io.hasPending(.recv, .client))
        #expect(io.context.sessionsAwaitingProxyHeader == 1)
        let data = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        io.completeRecv(.client, Array("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".utf8) + data)
        #expect(io.requests(.connect).map(\.peer) == [.main, .mirror(0), .mirror(1)])
        #expect(io.context.sessionsAwaitingProxyHeader == 0)
        io.connectAll()
        io.flushAllSends()
        for peer in [Leg.main, .mirror(0), .mirror(1)] { #expect(io.sent(to: peer) == data, "\(peer)") }
        #expect(io.stats.bytesClientToMain.value == UInt64(data.count))
        #expect(io.addressQueries == 0)
        finish(io)
        #expect(io.lastEnded?.cause == .completed)
        io.expectQuiescent()
    }

    @Test("--accept-proxy with --send-proxy: the balancer's client address is what main and mirrors see",
          arguments: ProxyProtocol.Version.allCases)
    func headerIsForwarded(version: ProxyProtocol.Version) throws {
        let io = try FakeSessionIO(limits: proxyLimits(mirrors: 1, send: version, accept: true))
        io.clientAddresses = client4  // the balancer's own connection: must not be used
        try #require(io.start() != nil)
        io.completeRecv(.client, ProxyProtocolTests.encode(.v2, client6))
        io.connectAll()
        io.flushAllSends()
        let header = ProxyProtocolTests.encode(version, client6)
        #expect(io.sent(to: .main) == header)
        #expect(io.sent(to: .mirror(0)) == header)
        #expect(io.addressQueries == 0)
        // A v2 LOCAL header (the balancer's health check): the connection's own addresses.
        let local = try FakeSessionIO(limits: proxyLimits(mirrors: 0, send: version, accept: true))
        local.clientAddresses = client4
        try #require(local.start() != nil)
        local.completeRecv(.client, ProxyProtocolTests.signature + [0x20, 0x00, 0x00, 0x00])
        local.connectAll()
        local.flushAllSends()
        #expect(local.sent(to: .main) == ProxyProtocolTests.encode(version, client4))
        finish(io)
        finish(local)
        io.expectQuiescent()
        local.expectQuiescent()
    }

    @Test("--accept-proxy: a header in pieces, at random cuts, is joined; only what follows it is forwarded", arguments: 0..<4)
    func headerInPieces(shard: Int) throws {
        var rng = SeededGenerator(seed: UInt64(1400 + shard))
        for round in 0..<50 {
            let io = try FakeSessionIO(limits: proxyLimits(mirrors: 1, accept: true))
            try #require(io.start() != nil)
            let header = round % 2 == 0 ? Array("PROXY TCP6 2001:db8::7 2001:db8::1 40001 8080\r\n".utf8)
                : ProxyProtocolTests.encode(.v2, client6)
            let data = TestBytes.random(Int.random(in: 0...3000, using: &rng), using: &rng)
            var stream = header + data
            while !stream.isEmpty {
                let piece = Int.random(in: 1...min(stream.count, 40), using: &rng)
                io.completeRecv(.client, Array(stream[..<piece]))
                stream.removeFirst(piece)
                io.connectAll()
                io.flushAllSends()
            }
            io.completeEOF(.client)
            finish(io, seed: UInt64(round))
            #expect(io.record(.main)?.sent == data, "seed \(shard) round \(round)")
            #expect(io.record(.mirror(0))?.sent == data, "seed \(shard) round \(round)")
            #expect(io.lastEnded?.cause == .completed)
            io.expectQuiescent()
        }
    }

    @Test("--accept-proxy: garbage, an oversized or malformed header, or EOF before it closes the client, counted")
    func badHeaders() throws {
        let cases: [(String, [[UInt8]])] = [
            ("an HTTP request", [Array("GET / HTTP/1.1\r\n\r\n".utf8)]),
            ("a v1 line without CRLF in 107 bytes", [Array("PROXY TCP4 ".utf8), [UInt8](repeating: 0x31, count: 120)]),
            ("a v2 length beyond the bound", [ProxyProtocolTests.signature + [0x21, 0x11, 0x10, 0x00]]),
            ("a malformed v1 line", [Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nGET".utf8)]),
            ("EOF in the middle", [Array("PROXY TCP4 1.2.3.4".utf8), []]),
            ("EOF at once", [[]]),
        ]
        for (name, pieces) in cases {
            let io = try FakeSessionIO(limits: proxyLimits(mirrors: 1, accept: true))
            try #require(io.start() != nil)
            for piece in pieces {
                if piece.isEmpty { io.completeEOF(.client) } else { io.completeRecv(.client, piece) }
            }
            io.completeCancelled()
            #expect(io.lastEnded?.cause == .badProxyHeader, "\(name)")
            #expect(io.requests(.connect).isEmpty, "\(name): main and mirrors never see it")
            #expect(io.stats.sessionsEndedByBadProxyHeader.value == 1, "\(name)")
            #expect(io.context.sessionsAwaitingProxyHeader == 0)
            #expect(io.pool.inUse == 0, "\(name): every slot is back")
            io.expectQuiescent()
        }
    }

    @Test("--accept-proxy: a client whose header is not whole by the deadline is closed; one in time is not")
    func headerDeadline() throws {
        let io = try FakeSessionIO(limits: proxyLimits(mirrors: 1, accept: true))
        io.context.nowMs = 10_000
        try #require(io.start() != nil)
        let slow = try #require(io.lastKey)
        try #require(io.start() != nil)
        let prompt = try #require(io.lastKey)
        io.completeRecv(.client, Array("PROXY TCP4 1.2.3.4 5.6.".utf8), slow)
        io.completeRecv(.client, Array("PROXY UNKNOWN\r\n".utf8), prompt)
        io.context.nowMs = 12_999
        io.checkProxyHeaderDeadlineAll()
        #expect(io.session(slow) != nil)
        io.context.nowMs = 13_000
        io.checkProxyHeaderDeadlineAll()
        io.completeCancelled()
        #expect(io.ended[slow]?.cause == .badProxyHeader)
        #expect(io.session(prompt) != nil, "a session past its header has no header deadline")
        #expect(io.stats.sessionsEndedByBadProxyHeader.value == 1)
        finish(io)
        io.expectQuiescent()
    }
}

@Suite("Session: PROXY protocol under random interleavings and faults")
struct SessionProxyHeaderSimulationTests {
    @Test("headers in random pieces, garbage, aborts and mirror faults: every promise holds, and main gets header and bytes",
          arguments: 0..<4)
    func randomized(shard: Int) throws {
        var completed = 0
        var refused = 0
        for seed in UInt64(14_000 + shard * 15)..<UInt64(14_000 + shard * 15 + 15) {
            var setup = SeededGenerator(seed: seed)
            let mirrorCount = Int.random(in: 0...2, using: &setup)
            let version = ProxyProtocol.Version.allCases.randomElement(using: &setup)!
            let limits = SessionLimits(mirrorCount: mirrorCount, backlogBytesMax: 1 << 20, backlogChunksMax: 8,
                                       readAheadChunks: 2, mirrorLingerMs: 1_000, mirrorFailuresBeforeBackoff: 2,
                                       sendProxy: version, acceptProxy: true,
                                       mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
            let io = try FakeSessionIO(limits: limits, slotCount: 8, sessions: 3)
            let simulation = Simulation(io: io, seed: seed)
            simulation.sessionsToStart = 4
            // Half the seeds also abort sessions at random moments, header awaited or not.
            simulation.abortOneIn = seed % 2 == 0 ? 0 : 150
            // What each session's client is, by the script's client bytes.
            var expected: [[UInt8]: [UInt8]?] = [:]
            simulation.makeScript = { rng in
                var script = PeerScript()
                let data = TestBytes.random(Int.random(in: 0...5_000, using: &rng), using: &rng)
                let source = TestBytes.random(16, using: &rng)
                let addresses = ProxyAddresses(
                    source: source.withUnsafeBytes { ProxyAddress(family: .ipv6, networkBytes: $0, port: UInt16.random(in: 1...65535, using: &rng)) },
                    destination: ProxyProtocolTests.address("2001:db8::1", 443))
                if rng.chance(1, in: 5) {
                    script.client = Array("GARBAGE ".utf8) + data
                    expected[script.client] = .some(nil)
                } else {
                    let incoming = ProxyProtocolTests.encode(rng.chance(1, in: 2) ? .v1 : .v2, addresses)
                    script.client = incoming + data
                    expected[script.client] = .some(ProxyProtocolTests.encode(version, addresses.sameFamily) + data)
                }
                script.main = TestBytes.random(Int.random(in: 0...3_000, using: &rng), using: &rng)
                script.chunkMax = Int.random(in: 7...900, using: &rng)
                script.mirrors = (0..<mirrorCount).map { _ in MirrorBehavior.all.randomElement(using: &rng)! }
                return script
            }
            #expect(simulation.run(), "seed \(seed): stuck; pending \(io.pending)")
            io.expectQuiescent()
            #expect(io.context.sessionsAwaitingProxyHeader == 0)
            for key in io.startedKeys {
                let script = try #require(io.scripts[key])
                let ended = try #require(io.ended[key])
                let wasAborted = simulation.aborted.contains(key)
                guard let upstream = expected[script.client] ?? nil else {
                    #expect(ended.cause == .badProxyHeader || (wasAborted && ended.cause == .aborted), "seed \(seed) \(key)")
                    #expect(io.record(.main, key) == nil, "seed \(seed) \(key): garbage never reaches main")
                    refused += ended.cause == .badProxyHeader ? 1 : 0
                    continue
                }
                #expect(ended.cause == .completed || (wasAborted && ended.cause == .aborted), "seed \(seed) \(key) \(String(describing: ended.cause))")
                if ended.cause == .completed {
                    completed += 1
                    #expect(io.sent(to: .main, key) == upstream, "seed \(seed) \(key)")
                    #expect(io.sent(to: .client, key) == script.main)
                } else {
                    #expect(io.sent(to: .main, key).isPrefix(of: upstream))
                }
                for mirror in 0..<mirrorCount {
                    #expect(io.sent(to: .mirror(mirror), key).isPrefix(of: upstream), "seed \(seed) \(key)")
                }
            }
        }
        #expect(completed > 20 && refused > 0, "\(completed) completed, \(refused) refused")
    }
}
