import Ring

/// The bytes waiting to be sent to one leg, in order: a fixed-capacity ring
/// of (slot, offset, length) chunks that reference pool slots. One per leg;
/// towards a mirror it is that mirror's backlog, bounded in bytes and chunks.
/// Its storage belongs to the `SessionTable`, allocated once at start.
struct SendQueue {
    struct Chunk {
        var slot: UInt32
        var offset: UInt32
        var length: UInt32
    }

    private let storage: UnsafeMutablePointer<Chunk>
    let capacity: Int
    private var head = 0
    private(set) var count = 0
    /// Bytes queued and not yet sent.
    private(set) var bytes = 0

    init(storage: UnsafeMutablePointer<Chunk>, capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.storage = storage
    }

    var isEmpty: Bool { count == 0 }
    var isFull: Bool { count == capacity }

    @inline(__always)
    mutating func append(slot: UInt32, offset: Int = 0, length: Int) {
        precondition(count < capacity, "send queue overflow")
        storage[(head &+ count) % capacity] = Chunk(slot: slot, offset: UInt32(offset), length: UInt32(length))
        count &+= 1
        bytes &+= length
    }

    @inline(__always)
    var first: Chunk? { count > 0 ? storage[head] : nil }

    /// Marks `sent` bytes of the first chunk as sent. Returns the chunk's slot
    /// when the chunk is now wholly sent and removed, so its holder can release it.
    @inline(__always)
    mutating func consume(_ sent: Int) -> UInt32? {
        precondition(count > 0 && sent <= Int(storage[head].length))
        bytes &-= sent
        if sent < Int(storage[head].length) {
            storage[head].offset &+= UInt32(sent)
            storage[head].length &-= UInt32(sent)
            return nil
        }
        let slot = storage[head].slot
        head = (head &+ 1) % capacity
        count &-= 1
        return slot
    }

    /// Removes and returns the last chunk (dropping a queue from its tail
    /// keeps a first chunk that a send in flight still reads).
    @inline(__always)
    mutating func removeLast() -> Chunk? {
        guard count > 0 else { return nil }
        count &-= 1
        let chunk = storage[(head &+ count) % capacity]
        bytes &-= Int(chunk.length)
        return chunk
    }

    /// Removes and returns the first chunk (to drop the queue when a leg closes).
    @inline(__always)
    mutating func removeFirst() -> Chunk? {
        guard count > 0 else { return nil }
        let chunk = storage[head]
        head = (head &+ 1) % capacity
        count &-= 1
        bytes &-= Int(chunk.length)
        return chunk
    }
}
