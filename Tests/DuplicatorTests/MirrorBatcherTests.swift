import Testing
@testable import Duplicator

/// The mirror batch's decisions alone (`MirrorBatcher`): no session, no IO.
/// `MirrorBatchTests` drives the same through a session.
@Suite("MirrorBatcher")
struct MirrorBatcherTests {
    private final class Queue {
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 8)
        var queue: SendQueue
        init(_ lengths: [Int]) {
            queue = SendQueue(storage: storage, capacity: 8)
            for (slot, length) in lengths.enumerated() { queue.append(slot: UInt32(slot), length: length) }
        }
        deinit { storage.deallocate() }
    }

    private static func decide(_ batcher: inout MirrorBatcher, _ queue: Queue, nowUs: UInt64, streamEnds: Bool = false,
                               bytesMax: Int = .max, chunksMax: Int = 32) -> MirrorBatcher.Decision {
        batcher.decide(queue: queue.queue, batchBytes: 1_000, delayUs: 500, nowUs: nowUs, streamEnds: streamEnds,
                       bytesMax: bytesMax, chunksMax: chunksMax)
    }

    @Test("queued bytes wait for the batch's bytes or its oldest byte's deadline")
    func waitsForBytesOrDeadline() {
        let queue = Queue([100, 100])
        var batcher = MirrorBatcher()
        batcher.queued(nowUs: 1_000, delayUs: 500)
        batcher.queued(nowUs: 1_200, delayUs: 500)
        #expect(batcher.deadlineUs == 1_500, "the oldest byte's deadline")
        #expect(Self.decide(&batcher, queue, nowUs: 1_499) == .wait(untilUs: 1_500))
        #expect(Self.decide(&batcher, queue, nowUs: 1_500) == .send(chunks: 2, bytes: 200))
        #expect(batcher.deadlineUs == 0, "nothing left waits")
        let full = Queue([600, 400])
        var fresh = MirrorBatcher()
        #expect(Self.decide(&fresh, full, nowUs: 10) == .send(chunks: 2, bytes: 1_000), "enough bytes go at once")
    }

    @Test("the stream's end sends what waits at once")
    func streamEndIsDue() {
        let queue = Queue([10])
        var batcher = MirrorBatcher()
        #expect(Self.decide(&batcher, queue, nowUs: 10) == .wait(untilUs: 510))
        #expect(Self.decide(&batcher, queue, nowUs: 10, streamEnds: true) == .send(chunks: 1, bytes: 10))
    }

    @Test("a send takes at most chunksMax chunks, and what it leaves is due at once")
    func chunksBound() {
        let queue = Queue([300, 300, 300, 300, 300])
        var batcher = MirrorBatcher()
        #expect(Self.decide(&batcher, queue, nowUs: 10, chunksMax: 3) == .send(chunks: 3, bytes: 900))
        #expect(batcher.deadlineUs == MirrorBatcher.dueNow)
        let rest = Queue([300])
        #expect(Self.decide(&batcher, rest, nowUs: 10) == .send(chunks: 1, bytes: 300), "due whatever the clock says")
    }

    @Test("a kept turn's end bounds the send and makes it due")
    func turnBound() {
        let queue = Queue([100, 100, 100])
        var batcher = MirrorBatcher()
        #expect(Self.decide(&batcher, queue, nowUs: 10, bytesMax: 250) == .send(chunks: 2, bytes: 200))
        #expect(batcher.deadlineUs == MirrorBatcher.dueNow)
        var whole = MirrorBatcher()
        #expect(Self.decide(&whole, queue, nowUs: 10, bytesMax: 300) == .wait(untilUs: 510),
                "a bound past the queued bytes does not make them due")
    }

    @Test("a short send makes the rest due at once")
    func shortSend() {
        var batcher = MirrorBatcher()
        batcher.queued(nowUs: 1_000, delayUs: 500)
        batcher.sentShort()
        #expect(batcher.deadlineUs == MirrorBatcher.dueNow)
        batcher.queued(nowUs: 2_000, delayUs: 500)
        #expect(batcher.deadlineUs == MirrorBatcher.dueNow, "new bytes do not push a due batch back")
    }
}
