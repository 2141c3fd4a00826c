import Glibc
import Logging
import Testing
@testable import Duplicator
import LoadTools
import Platform
import Ring

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
    static func worker(main port: UInt16, configure: (inout Config) -> Void = { _ in }) throws -> EpollWorker {
        var config = Config(listen: try Endpoint(parsing: "127.0.0.1:0", role: .listen), main: endpoint(port), mirrors: [])
        config.backend = .epoll
        configure(&config)
        try config.validate()
        let targets = [try config.main.resolve(role: .connect)]
        let stats = WorkerStats(mirrorCount: 0)
        let worker = try EpollWorker(config: config, targets: targets, loopGuard: LoopGuard(targets: targets, localAddresses: []),
                               mirrorHealth: MirrorHealth(config.limits), listenerFDs: [], stats: stats, allStats: [stats],
                               control: WorkerControl(), logger: Logger(label: "test"))
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

    @Test("connect deadlines of two durations come due in deadline order")
    func connectDeadlines() {
        var deadlines = ConnectDeadlines()
        #expect(deadlines.isEmpty && deadlines.nextDeadlineMs == nil)
        deadlines.add(fd: 5, serial: 1, deadlineMs: 10_100, timeoutMs: 10_000)
        deadlines.add(fd: 6, serial: 2, deadlineMs: 600, timeoutMs: 500)
        deadlines.add(fd: 7, serial: 3, deadlineMs: 700, timeoutMs: 500)
        #expect(deadlines.nextDeadlineMs == 600)
        #expect(deadlines.popDue(nowMs: 599) == nil)
        #expect(deadlines.popDue(nowMs: 650).map { [$0.fd, Int32($0.serial)] } == [6, 2])
        #expect(deadlines.popDue(nowMs: 650) == nil)
        #expect(deadlines.nextDeadlineMs == 700)
        #expect(deadlines.popDue(nowMs: 20_000).map { [$0.fd, Int32($0.serial)] } == [7, 3])
        #expect(deadlines.popDue(nowMs: 20_000).map { [$0.fd, Int32($0.serial)] } == [5, 1])
        #expect(deadlines.isEmpty)
    }

    /// Under steady load some connects are always pending, so a queue is
    /// never empty: its storage must still stay near what is pending.
    @Test("connect deadlines under steady load keep bounded storage")
    func connectDeadlinesStayBounded() {
        var deadlines = ConnectDeadlines()
        var nowMs: UInt64 = 0
        for serial in 0..<100_000 {
            nowMs += 1
            deadlines.add(fd: Int32(serial % 1000), serial: UInt32(serial), deadlineMs: nowMs + 100, timeoutMs: 100)
            while deadlines.popDue(nowMs: nowMs) != nil {}
        }
        // 100 pending at any time.
        #expect(deadlines.storedCount <= 300, "\(deadlines.storedCount) entries stored for 100 pending")
        #expect(deadlines.nextDeadlineMs == nowMs - 99 + 100)
    }
}
