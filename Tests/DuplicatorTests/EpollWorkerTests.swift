import Glibc
import Logging
import Testing
@testable import Duplicator
import LoadTools
import Platform
import Ring
import TestSupport

/// The epoll backend completes each operation as io_uring would, over real
/// loopback sockets but without the worker's logic: its completions are
/// collected round by round (`EpollWorker.completionsOfOneRound`) and
/// compared with what a ring gives the sessions (`SessionIO`).
@Suite("Epoll backend: io_uring's completions emulated on readiness", .timeLimit(.minutes(6)))
struct EpollWorkerTests {
    static let connectTag = CompletionTag(kind: .connect, leg: .main, generation: 1, session: 0)
    static let timeoutTag = CompletionTag(kind: .connectTimeout, leg: .main, generation: 1, session: 0)
    static let recvTag = CompletionTag(kind: .recv, leg: .main, generation: 1, session: 0)
    static let otherRecvTag = CompletionTag(kind: .recv, leg: .main, generation: 1, session: 1)
    static let cancelTag = CompletionTag(kind: .cancel, leg: .main, generation: 1, session: 0)
    static let closeTag = CompletionTag(kind: .close, leg: .main, generation: 1, session: 0)

    /// An epoll worker whose one target (main) is `port`; no listener.
    /// With `mirrors`, that many mirror targets at `port` too (for gathered sends).
    static func worker(main port: UInt16, mirrors: Int = 0, configure: (inout Config) -> Void = { _ in }) throws -> EpollWorker {
        var config = Config(listen: try Endpoint(parsing: "127.0.0.1:0", role: .listen), main: endpoint(port),
                            mirrors: (0..<mirrors).map { _ in endpoint(port) })
        config.backend = .epoll
        configure(&config)
        try config.validate()
        let targets = try ([config.main] + config.mirrors).map { try $0.resolve(role: .connect) }
        let stats = WorkerStats(mirrorCount: mirrors)
        let worker = try EpollWorker(WorkerEnvironment(config: config, targets: targets,
                                                       loopGuard: LoopGuard(targets: targets, localAddresses: []),
                                                       mirrorHealth: MirrorHealth(config.limits), listenerFDs: [], stats: stats,
                                                       allStats: [stats], control: WorkerControl(), logger: Logger(label: "test")))
        worker.context.nowMs = MonotonicClock.coarseMs()  // as the loop keeps it
        return worker
    }

    /// Rounds until `count` completions have come, or `timeoutSeconds` passed.
    static func completions(_ worker: EpollWorker, _ count: Int, timeoutSeconds: Double = 5) -> [WorkerCompletion] {
        var collected: [WorkerCompletion] = []
        let deadline = monotonicSeconds() + timeoutSeconds
        while collected.count < count && monotonicSeconds() < deadline {
            collected += worker.completionsOfOneRound(timeoutNanoseconds: 20_000_000)
        }
        return collected
    }

    static func summary(_ completions: [WorkerCompletion]) -> [String] {
        completions.map { "\(OperationKind(rawValue: $0.tag.kind).map { "\($0)" } ?? "?") \($0.result)" }
    }

    /// A connected (proxy side, peer side) pair through the worker's connect.
    static func connected(_ worker: EpollWorker, listener: Int32) throws -> (fd: Int32, peer: Int32) {
        let fd = worker.openSocket(for: .main)
        #expect(fd >= 0)
        worker.connect(fd: fd, leg: .main, timeoutMs: 2_000, tag: connectTag, timeoutTag: timeoutTag)
        // The connect, then its linked timeout, cancelled since the connect ended first.
        #expect(summary(completions(worker, 2)) == ["connect 0", "connectTimeout \(-ECANCELED)"])
        let peer = accept(listener, nil, nil)
        guard peer >= 0 else { throw TestFailure("accept: errno \(errno)") }
        return (fd, peer)
    }

    @Test("a receive parks until bytes come, takes a slot only then, and EOF completes with 0 and no slot")
    func receiveIntoSlot() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port)
        let (fd, peer) = try Self.connected(worker, listener: listener)
        defer { close(peer) }
        worker.recv(fd: fd, tag: Self.recvTag)
        #expect(worker.completionsOfOneRound(timeoutNanoseconds: 50_000_000).isEmpty, "nothing to read yet")
        #expect(worker.pool.inUse == 0)
        let message = Array("hello, mirror".utf8)
        #expect(write(peer, message, message.count) == message.count)
        let received = Self.completions(worker, 1)
        #expect(Self.summary(received) == ["recv \(message.count)"])
        let slot = try #require(received.first?.selectedBuffer)
        #expect(Array(UnsafeRawBufferPointer(start: worker.pool.pointer(slot), count: message.count)) == message)
        worker.recycle(slot: slot)
        shutdown(peer, Int32(SHUT_WR))
        worker.recv(fd: fd, tag: Self.recvTag)
        let end = Self.completions(worker, 1)
        #expect(Self.summary(end) == ["recv 0"])
        #expect(end.first?.selectedBuffer == nil)
        worker.close(fd: fd, tag: Self.closeTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["close 0"])
    }

    @Test("with no slot lent, a receive completes with -ENOBUFS once bytes are there, and stays parked while none are")
    func noBufferOnlyWithBytes() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port) { $0.providedWindowSlots = 1 }
        let (busy, busyPeer) = try Self.connected(worker, listener: listener)
        defer { close(busyPeer) }
        let (idle, idlePeer) = try Self.connected(worker, listener: listener)
        defer { close(idlePeer) }
        let bytes = [UInt8](repeating: 7, count: 40_000)
        #expect(write(busyPeer, bytes, bytes.count) == bytes.count)
        usleep(50_000)
        _ = worker.completionsOfOneRound(timeoutNanoseconds: 10_000_000)
        // One slot lent this round: the first receive takes it, a full slot's worth.
        worker.recv(fd: busy, tag: Self.recvTag)
        worker.recv(fd: idle, tag: Self.otherRecvTag)
        #expect(!worker.buffersLent)
        worker.recv(fd: busy, tag: Self.recvTag)
        let round = worker.completionsOfOneRound(timeoutNanoseconds: 0)
        #expect(Self.summary(round) == ["recv \(worker.pool.slotSize)", "recv \(-ENOBUFS)"])
        #expect(round.first?.selectedBuffer != nil && round.last?.selectedBuffer == nil)
        #expect(round.allSatisfy { $0.tag.session == 0 }, "the idle socket's receive waits for bytes")
        if let slot = round.first?.selectedBuffer { worker.recycle(slot: slot) }
        worker.cancel(fd: idle, tag: Self.cancelTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["recv \(-ECANCELED)", "cancel 1"])
    }

    /// A worker whose connect to `port`, with a timeout of `timeoutMs`, is asked for now.
    static func connecting(to port: UInt16, timeoutMs: Int) throws -> (worker: EpollWorker, fd: Int32) {
        let worker = try Self.worker(main: port)
        let fd = worker.openSocket(for: .main)
        #expect(fd >= 0)
        worker.connect(fd: fd, leg: .main, timeoutMs: timeoutMs, tag: Self.connectTag, timeoutTag: Self.timeoutTag)
        return (worker, fd)
    }

    @Test("a connect that times out completes as a linked timeout cancels it: the connect -ECANCELED, the timeout -ETIME")
    func connectTimeout() throws {
        let server = try startServer(.blackhole)
        defer { server.stop() }
        let start = monotonicSeconds()
        let (worker, fd) = try Self.connecting(to: server.boundPort, timeoutMs: 200)
        #expect(Self.summary(Self.completions(worker, 2)) == ["connect \(-ECANCELED)", "connectTimeout \(-ETIME)"])
        #expect(monotonicSeconds() - start >= 0.15)
        worker.close(fd: fd, tag: Self.closeTag)
    }

    @Test("a refused connect completes with -ECONNREFUSED and its timeout with -ECANCELED")
    func connectRefused() throws {
        let refusing = RefusingPort()
        let (worker, fd) = try Self.connecting(to: refusing.port, timeoutMs: 2_000)
        #expect(Self.summary(Self.completions(worker, 2)) == ["connect \(-ECONNREFUSED)", "connectTimeout \(-ECANCELED)"])
        worker.close(fd: fd, tag: Self.closeTag)
    }

    @Test("cancel completes the pending connect and its timeout with -ECANCELED, then itself; with nothing pending, -ENOENT")
    func cancelPending() throws {
        let server = try startServer(.blackhole)
        defer { server.stop() }
        let (worker, fd) = try Self.connecting(to: server.boundPort, timeoutMs: 10_000)
        worker.cancel(fd: fd, tag: Self.cancelTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0))
                == ["connect \(-ECANCELED)", "connectTimeout \(-ECANCELED)", "cancel 1"])
        worker.cancel(fd: fd, tag: Self.cancelTag)
        worker.close(fd: fd, tag: Self.closeTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["cancel \(-ENOENT)", "close 0"])
    }

    // MARK: - Sending

    static let sendTag = CompletionTag(kind: .send, leg: .main, generation: 1, session: 0)
    static let mirrorSendTag = CompletionTag(kind: .send, leg: .mirror(0), generation: 1, session: 0)
    static let shutdownTag = CompletionTag(kind: .shutdown, leg: .main, generation: 1, session: 0)

    /// What `peer` reads until `count` bytes, EOF, or `timeoutSeconds`; and whether EOF came.
    static func read(_ peer: Int32, count: Int = .max, timeoutSeconds: Double = 5) -> (bytes: [UInt8], eof: Bool) {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = monotonicSeconds() + timeoutSeconds
        while bytes.count < count && monotonicSeconds() < deadline {
            var entry = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 20) > 0 else { continue }
            let read = buffer.withUnsafeMutableBytes { Glibc.recv(peer, $0.baseAddress, min($0.count, count - bytes.count), 0) }
            if read == 0 { return (bytes, true) }
            if read < 0 { break }
            bytes += buffer[0..<read]
        }
        return (bytes, false)
    }

    /// Copies `bytes` into free slots of the worker's pool, as receives would have.
    static func slots(_ worker: EpollWorker, holding pieces: [[UInt8]], offset: Int = 0) -> [UInt32] {
        pieces.enumerated().map { index, piece in
            // Slots from the top of the pool: the worker's receives take them from the bottom.
            let slot = UInt32(worker.pool.slotCount - 1 - index)
            let base = worker.pool.pointer(slot) + offset
            piece.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: piece.count) }
            return slot
        }
    }

    @Test("a send from a slot's offset completes with its length, and the peer gets exactly those bytes")
    func sendFromSlot() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port)
        let (fd, peer) = try Self.connected(worker, listener: listener)
        defer { close(peer) }
        var generator = SeededGenerator(seed: 41)
        let payload = generator.bytes(3000)
        let slot = Self.slots(worker, holding: [payload], offset: 100)[0]
        worker.send(fd: fd, slot: slot, offset: 100 + 7, length: 2000, tag: Self.sendTag)
        #expect(Self.summary(Self.completions(worker, 1)) == ["send 2000"])
        #expect(Self.read(peer, count: 2000).bytes == Array(payload[7..<2007]))
        worker.close(fd: fd, tag: Self.closeTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["close 0"])
    }

    @Test("a gathered send sends its chunks in queue order, each from its slot and offset, and completes with their sum")
    func gatheredSend() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port, mirrors: 1)
        let (fd, peer) = try Self.connected(worker, listener: listener)
        defer { close(peer) }
        var generator = SeededGenerator(seed: 42)
        let pieces = (0..<5).map { generator.bytes(300 + $0 * 111) }
        let slots = Self.slots(worker, holding: pieces)
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 8)
        defer { storage.deallocate() }
        var queue = SendQueue(storage: storage, capacity: 8)
        // A queue whose ring has wrapped, with a first chunk already partly sent.
        for _ in 0..<6 { queue.append(slot: 0, length: 1) }
        for _ in 0..<6 { _ = queue.consume(1) }
        for (slot, piece) in zip(slots, pieces) { queue.append(slot: slot, length: piece.count) }
        #expect(queue.consume(13) == nil)
        let expected = Array(pieces.joined().dropFirst(13))
        // The first four chunks go: the fifth stays queued.
        let length = expected.count - pieces[4].count
        worker.sendGathered(fd: fd, queue: queue, chunks: 4, length: length, tag: Self.mirrorSendTag)
        #expect(Self.summary(Self.completions(worker, 1)) == ["send \(length)"])
        let received = Self.read(peer, count: expected.count, timeoutSeconds: 1).bytes
        #expect(received.count == length)
        let same = received == Array(expected.prefix(length))
        #expect(same, "the chunks' bytes in queue order")
    }

    @Test("a send the socket cannot take whole completes short, and the next send parks until the peer reads; no byte lost")
    func shortSendParks() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port)
        let (fd, peer) = try Self.connected(worker, listener: listener)
        defer { close(peer) }
        var small: Int32 = 64 * 1024
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var generator = SeededGenerator(seed: 43)
        let payload = generator.bytes(4 << 20)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: payload.count, alignment: 16)
        defer { memory.deallocate() }
        payload.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
        // Each completion's rest is asked for again, as the session does,
        // until the socket takes no more: the send then parks.
        var offset = 0
        var shortSends = 0
        var parked = false
        while !parked && offset < payload.count {
            worker.send(fd: fd, from: memory + offset, length: payload.count - offset, tag: Self.sendTag)
            let round = Self.completions(worker, 1, timeoutSeconds: 0.3)
            guard let completion = round.first else {
                parked = true
                break
            }
            #expect(round.count == 1 && completion.result > 0)
            if Int(completion.result) < payload.count - offset { shortSends += 1 }
            offset += Int(completion.result)
        }
        #expect(parked, "the socket never filled: \(offset) bytes taken")
        #expect(shortSends >= 1 && offset < payload.count, "short sends before the socket filled: \(shortSends)")
        #expect(worker.completionsOfOneRound(timeoutNanoseconds: 100_000_000).isEmpty, "parked until writable")
        // The peer reads: the parked send completes, and the rest follows.
        var received: [UInt8] = []
        let deadline = monotonicSeconds() + 20
        while (offset < payload.count || received.count < payload.count) && monotonicSeconds() < deadline {
            received += Self.read(peer, count: payload.count - received.count, timeoutSeconds: 0.02).bytes
            for completion in worker.completionsOfOneRound(timeoutNanoseconds: 1_000_000) {
                #expect(completion.result > 0)
                offset += Int(completion.result)
                if offset < payload.count {
                    shortSends += 1
                    worker.send(fd: fd, from: memory + offset, length: payload.count - offset, tag: Self.sendTag)
                }
            }
        }
        #expect(offset == payload.count)
        #expect(shortSends > 1)
        #expect(received.count == payload.count)
        // (A Bool: a failed comparison of two 4 MiB arrays would print both.)
        let same = received == payload
        #expect(same, "every byte, in order, across \(shortSends) short sends")
    }

    @Test("shutdownWrite completes with 0 and the peer reads every byte sent before it, then EOF")
    func shutdownWriteSendsEOF() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port)
        let (fd, peer) = try Self.connected(worker, listener: listener)
        defer { close(peer) }
        let payload = Array("the last bytes".utf8)
        let slot = Self.slots(worker, holding: [payload])[0]
        worker.send(fd: fd, slot: slot, offset: 0, length: payload.count, tag: Self.sendTag)
        #expect(Self.summary(Self.completions(worker, 1)) == ["send \(payload.count)"])
        worker.shutdownWrite(fd: fd, tag: Self.shutdownTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["shutdown 0"])
        let (bytes, eof) = Self.read(peer)
        #expect(bytes == payload)
        #expect(eof, "the peer sees EOF")
        // Our side still reads: the peer's reply and its EOF arrive after our half-close.
        #expect(write(peer, "ok", 2) == 2)
        shutdown(peer, Int32(SHUT_WR))
        worker.recv(fd: fd, tag: Self.recvTag)
        let reply = Self.completions(worker, 1)
        #expect(Self.summary(reply) == ["recv 2"])
        if let slot = reply.first?.selectedBuffer { worker.recycle(slot: slot) }
        worker.close(fd: fd, tag: Self.closeTag)
        _ = worker.completionsOfOneRound(timeoutNanoseconds: 0)
    }

    @Test("close closes the descriptor once, completes with close(2)'s result, and the peer sees EOF")
    func closeClosesOnce() throws {
        let (listener, port) = try loopbackListener(queueLength: 8)
        defer { close(listener) }
        let worker = try Self.worker(main: port)
        let (fd, peer) = try Self.connected(worker, listener: listener)
        defer { close(peer) }
        worker.close(fd: fd, tag: Self.closeTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["close 0"])
        #expect(fcntl(fd, F_GETFD) == -1 && errno == EBADF, "the descriptor is closed")
        #expect(Self.read(peer, timeoutSeconds: 2).eof)
        // A stale edge of the old socket reaches nothing: a new socket may have its number.
        let (again, againPeer) = try Self.connected(worker, listener: listener)
        defer { close(againPeer) }
        #expect(worker.completionsOfOneRound(timeoutNanoseconds: 50_000_000).isEmpty)
        worker.close(fd: again, tag: Self.closeTag)
        #expect(Self.summary(worker.completionsOfOneRound(timeoutNanoseconds: 0)) == ["close 0"])
    }
}
