import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

@Suite("SessionTests.SendQueue")
struct SendQueueTests {
    @Test("append, partial consume, wrap-around and removal keep bytes and order")
    func sendQueue() {
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 3)
        defer { storage.deallocate() }
        var queue = SendQueue(storage: storage, capacity: 3)
        #expect(queue.isEmpty && !queue.isFull && queue.first == nil)
        queue.append(slot: 7, length: 100)
        queue.append(slot: 8, offset: 5, length: 50)
        #expect(queue.count == 2 && queue.bytes == 150)
        #expect(queue.consume(40) == nil)
        #expect(queue.first?.slot == 7 && queue.first?.offset == 40 && queue.first?.length == 60)
        #expect(queue.bytes == 110)
        #expect(queue.consume(60) == 7)
        #expect(queue.count == 1 && queue.first?.slot == 8 && queue.first?.offset == 5)
        queue.append(slot: 9, length: 10)
        queue.append(slot: 10, length: 20)  // wraps around the storage
        #expect(queue.isFull && queue.bytes == 80)
        #expect(queue.removeLast()?.slot == 10)
        #expect(queue.removeFirst()?.slot == 8)
        #expect(queue.count == 1 && queue.bytes == 10)
        #expect(queue.consume(10) == 9)
        #expect(queue.isEmpty && queue.bytes == 0)
        #expect(queue.removeLast() == nil && queue.removeFirst() == nil)
    }

    @Test("queues interleaved with a stride keep to their own entries and restart at position 0 when empty")
    func stridedQueues() {
        let storage = UnsafeMutablePointer<SendQueue.Chunk>.allocate(capacity: 8)
        storage.initialize(repeating: SendQueue.Chunk(slot: 99, offset: 0, length: 0), count: 8)
        defer { storage.deallocate() }
        var even = SendQueue(storage: storage, stride: 2, capacity: 4)
        var odd = SendQueue(storage: storage + 1, stride: 2, capacity: 4)
        for slot in UInt32(0)..<4 {
            even.append(slot: slot, length: 1)
            odd.append(slot: 10 + slot, length: 1)
        }
        #expect((0..<8).map { storage[$0].slot } == [0, 10, 1, 11, 2, 12, 3, 13])
        #expect(even.consume(1) == 0 && odd.consume(1) == 10)
        #expect(even.consume(1) == 1 && even.consume(1) == 2 && even.consume(1) == 3)
        #expect(even.isEmpty)
        // Emptied, it starts over at position 0 (entry 0), not where its head was.
        even.append(slot: 20, length: 1)
        #expect(storage[0].slot == 20)
        #expect(odd.first?.slot == 11 && odd.count == 3)
    }

    @Test("chunk capacity covers the client, main and every mirror's backlog")
    func chunkCapacity() {
        let limits = SessionLimits(mirrorCount: 3, backlogChunksMax: 10, readAheadChunks: 2,
                                   mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        #expect(Session.chunkCapacity(limits) == 2 * 2 + 3 * 10)
    }
}
