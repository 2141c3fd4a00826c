import Glibc

/// A fixed pool of equally sized, page-aligned slots in one allocation, with a
/// reference count per slot. One allocation at start, none after.
///
/// The pool counts holders; it does not decide who gets a free slot. That is
/// the job of whoever lends the free slots out: the kernel through a provided
/// buffer ring (`ProvidedBuffers`), or a test's fake. A slot is `adopt`ed
/// with count 1 when it is handed out, `retain`ed by each further holder, and
/// `release` says when the last holder let go so the slot can be lent again.
///
/// The memory can be registered with a ring as fixed buffers
/// (`Ring.registerBuffers(_:)`), one iovec per slot, so a slot's index is its
/// fixed-buffer index. Owned by one thread; not thread-safe by design.
public final class BufferPool {
    public let slotSize: Int
    public let slotCount: Int
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    private let references: UnsafeMutablePointer<UInt32>
    /// Slots with at least one holder.
    public private(set) var inUse = 0

    /// - Parameters:
    ///   - slotSize: rounded up to whole pages.
    /// - Throws: `RingError` when the memory cannot be had.
    public init(slotSize: Int, slotCount: Int) throws {
        precondition(slotSize > 0 && slotCount > 0 && slotCount < Int(UInt16.max))
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let alignedSlot = (slotSize + pageSize - 1) / pageSize * pageSize
        self.slotSize = alignedSlot
        self.slotCount = slotCount
        byteCount = alignedSlot * slotCount
        let memory = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != MAP_FAILED else {
            throw RingError("mmap of a \(alignedSlot * slotCount)-byte buffer pool", errno: errno)
        }
        base = memory
        references = .allocate(capacity: slotCount)
        references.initialize(repeating: 0, count: slotCount)
    }

    deinit {
        munmap(base, byteCount)
        references.deallocate()
    }

    /// Slots no one holds.
    public var available: Int { slotCount - inUse }

    /// Takes a free slot that was just handed out: its count becomes 1.
    @inline(__always)
    public func adopt(_ slot: UInt32) {
        precondition(references[Int(slot)] == 0, "adopt of a held slot")
        references[Int(slot)] = 1
        inUse &+= 1
    }

    @inline(__always)
    public func retain(_ slot: UInt32) {
        precondition(references[Int(slot)] > 0, "retain of a free slot")
        references[Int(slot)] &+= 1
    }

    /// Drops one reference; returns true when that was the last holder.
    @inline(__always) @discardableResult
    public func release(_ slot: UInt32) -> Bool {
        let count = references[Int(slot)]
        precondition(count > 0, "release of a free slot")
        references[Int(slot)] = count &- 1
        guard count == 1 else { return false }
        inUse &-= 1
        return true
    }

    @inline(__always)
    public func referenceCount(_ slot: UInt32) -> Int { Int(references[Int(slot)]) }

    @inline(__always)
    public func pointer(_ slot: UInt32) -> UnsafeMutableRawPointer {
        base + Int(slot) &* slotSize
    }
}
