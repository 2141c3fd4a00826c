import Glibc
import Logging
import Ring
import Testing
@testable import Duplicator

/// The message of a gathered mirror send (`WorkerSockets.gatherMessage`),
/// which both kernel backends hand to the kernel: one iovec per chunk, in
/// queue order, each at its slot's offset; one message per (session,
/// mirror), so that two legs' sends in flight never share one.
@Suite("GatherMessageTests")
struct GatherMessageTests {
    static func sockets(sessions: Int, mirrors: Int) throws -> (WorkerSockets, Config) {
        var config = Config(listen: try Endpoint(parsing: "127.0.0.1:0", role: .listen), main: endpoint(9),
                            mirrors: (0..<mirrors).map { endpoint(UInt16(10 + $0)) })
        config.sessionsMax = sessions
        try config.validate()
        let targets = try ([config.main] + config.mirrors).map { try $0.resolve(role: .connect) }
        let sockets = try WorkerSockets(config: config, targets: targets, loopGuard: LoopGuard(targets: targets, localAddresses: []),
                                        stats: WorkerStats(mirrorCount: mirrors), logger: Logger(label: "test"), nonBlocking: true)
        return (sockets, config)
    }

    /// (address, length) of each iovec of `message`.
    static func vectors(_ message: UnsafeMutablePointer<msghdr>) -> [(UnsafeMutableRawPointer?, Int)] {
        (0..<Int(message.pointee.msg_iovlen)).map { (message.pointee.msg_iov[$0].iov_base, message.pointee.msg_iov[$0].iov_len) }
    }

    @Test("one iovec per chunk asked for, in queue order from the queue's head, at each chunk's slot and offset")
    func chunksInOrder() throws {
        let (sockets, _) = try Self.sockets(sessions: 4, mirrors: 2)
        let pool = try BufferPool(slotSize: 4096, slotCount: 16)
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 6)
        defer { storage.deallocate() }
        var queue = SendQueue(storage: storage, capacity: 6)
        // Wrapped around its storage, with a partly sent first chunk.
        for _ in 0..<4 { queue.append(slot: 0, length: 1) }
        for _ in 0..<4 { _ = queue.consume(1) }
        let chunks: [(slot: UInt32, offset: Int, length: Int)] = [(9, 0, 1000), (3, 17, 200), (12, 5, 4091), (1, 0, 1), (7, 0, 64)]
        for chunk in chunks { queue.append(slot: chunk.slot, offset: chunk.offset, length: chunk.length) }
        #expect(queue.consume(100) == nil)
        let tag = CompletionTag(kind: .send, leg: .mirror(1), generation: 3, session: 2)
        let message = sockets.gatherMessage(tag: tag, queue: queue, chunks: 4, pool: pool)
        let expected: [(UnsafeMutableRawPointer?, Int)] = [(pool.pointer(9) + 100, 900), (pool.pointer(3) + 17, 200),
                                                            (pool.pointer(12) + 5, 4091), (pool.pointer(1), 1)]
        let got = Self.vectors(message)
        #expect(got.count == 4)
        #expect(got.map(\.0) == expected.map(\.0), "each chunk's address, in queue order")
        #expect(got.map(\.1) == expected.map(\.1), "each chunk's length")
        #expect(message.pointee.msg_name == nil && message.pointee.msg_controllen == 0 && message.pointee.msg_flags == 0)
    }

    @Test("every (session, mirror) has a message and iovecs of its own")
    func messagePerLeg() throws {
        let sessions = 3, mirrors = 2
        let (sockets, config) = try Self.sockets(sessions: sessions, mirrors: mirrors)
        try #require(config.sessionsPerWorker == sessions)
        let pool = try BufferPool(slotSize: 4096, slotCount: 4)
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: Session.gatherChunksMax)
        defer { storage.deallocate() }
        var queue = SendQueue(storage: storage, capacity: Session.gatherChunksMax)
        for index in 0..<Session.gatherChunksMax { queue.append(slot: UInt32(index % 4), offset: index, length: 10) }
        var messages: [UnsafeMutablePointer<msghdr>] = []
        var vectorRanges: [Range<UInt>] = []
        for session in 0..<sessions {
            for mirror in 0..<mirrors {
                let tag = CompletionTag(kind: .send, leg: .mirror(mirror), generation: 1, session: UInt32(session))
                let message = sockets.gatherMessage(tag: tag, queue: queue, chunks: Session.gatherChunksMax, pool: pool)
                #expect(Int(message.pointee.msg_iovlen) == Session.gatherChunksMax)
                messages.append(message)
                let start = UInt(bitPattern: message.pointee.msg_iov)
                vectorRanges.append(start..<start + UInt(Session.gatherChunksMax * MemoryLayout<iovec>.stride))
            }
        }
        #expect(Set(messages).count == sessions * mirrors, "one message per leg")
        for (index, range) in vectorRanges.enumerated() {
            for other in vectorRanges[(index + 1)...] { #expect(!range.overlaps(other), "iovecs of two legs overlap") }
        }
        // An earlier leg's message is unchanged by a later leg's send.
        #expect(Self.vectors(messages[0]).map(\.1) == Array(repeating: 10, count: Session.gatherChunksMax))
    }
}
