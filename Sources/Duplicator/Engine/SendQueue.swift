import Ring

/// The bytes waiting to be sent to one leg, in order: a fixed-capacity ring
/// of (slot, offset, length) chunks that reference pool slots. One per leg;
/// towards a mirror it is that mirror's backlog, bounded in bytes and chunks.
/// Its storage belongs to the `SessionTable`, allocated once at start;
/// position `p` of the ring is `storage[p * stride]`, so the same position
/// of every session's queue sits side by side (see `SessionTable`), and the
/// ring restarts at position 0 whenever it empties: shallow queues, the
/// usual case, touch only the first few rows of the table's memory.
public struct SendQueue {
    public struct Chunk {
        public var slot: UInt32
        public var offset: UInt32
        public var length: UInt32
    }

    private let storage: UnsafeMutablePointer<Chunk>
    private let stride: Int
    let capacity: Int
    private var head = 0
    public private(set) var count = 0
    /// Bytes queued and not yet sent.
    public private(set) var bytes = 0

    init(storage: UnsafeMutablePointer<Chunk>, stride: Int = 1, capacity: Int) {
        precondition(capacity > 0 && stride > 0)
        self.capacity = capacity
        self.storage = storage
        self.stride = stride
    }

    @inline(__always)
    private func entry(_ position: Int) -> UnsafeMutablePointer<Chunk> {
        storage + position &* stride
    }

    var isEmpty: Bool { count == 0 }
    var isFull: Bool { count == capacity }

    @inline(__always)
    mutating func append(slot: UInt32, offset: Int = 0, length: Int) {
        precondition(count < capacity, "send queue overflow")
        entry((head &+ count) % capacity).pointee = Chunk(slot: slot, offset: UInt32(offset), length: UInt32(length))
        count &+= 1
        bytes &+= length
    }

    @inline(__always)
    var first: Chunk? { count > 0 ? entry(head).pointee : nil }

    /// The chunk `index` places behind the first (0: the first), for a
    /// gathered send of several chunks at once.
    @inline(__always)
    public func chunk(at index: Int) -> Chunk {
        precondition(index >= 0 && index < count)
        return entry((head &+ index) % capacity).pointee
    }

    /// Marks `sent` bytes of the first chunk as sent. Returns the chunk's slot
    /// when the chunk is now wholly sent and removed, so its holder can release it.
    @inline(__always)
    mutating func consume(_ sent: Int) -> UInt32? {
        let first = entry(head)
        precondition(count > 0 && sent <= Int(first.pointee.length))
        bytes &-= sent
        if sent < Int(first.pointee.length) {
            first.pointee.offset &+= UInt32(sent)
            first.pointee.length &-= UInt32(sent)
            return nil
        }
        let slot = first.pointee.slot
        advanceHead()
        return slot
    }

    /// Removes and returns the last chunk (dropping a queue from its tail
    /// keeps a first chunk that a send in flight still reads).
    @inline(__always)
    mutating func removeLast() -> Chunk? {
        guard count > 0 else { return nil }
        count &-= 1
        let chunk = entry((head &+ count) % capacity).pointee
        bytes &-= Int(chunk.length)
        if count == 0 { head = 0 }
        return chunk
    }

    /// Removes and returns the first chunk (to drop the queue when a leg closes).
    @inline(__always)
    mutating func removeFirst() -> Chunk? {
        guard count > 0 else { return nil }
        let chunk = entry(head).pointee
        bytes &-= Int(chunk.length)
        advanceHead()
        return chunk
    }

    @inline(__always)
    private mutating func advanceHead() {
        count &-= 1
        // An empty ring starts over at position 0: its memory stays in the first rows.
        head = count == 0 ? 0 : (head &+ 1) % capacity
    }
}
