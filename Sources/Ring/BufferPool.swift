import Glibc
import Platform

/// A pool of equally sized, page-aligned slots in one reservation of address
/// space, with a reference count per slot. One allocation at start, none
/// after; the reservation is `MAP_NORESERVE`, so a slot's pages cost memory
/// only once they are used: the pool's resident size is the high-water mark of
/// what was used, up to `byteCount`, the operator's bound.
///
/// Slots are grouped in segments of `segmentSlots` (about 1 MiB): the unit in
/// which a lender grows the part of the pool it uses and registers it with a
/// ring as one fixed buffer (`ProvidedBuffers`).
///
/// The pool counts holders; it does not decide who gets a free slot. That is
/// the job of whoever lends the free slots out: the kernel through a provided
/// buffer ring (`ProvidedBuffers`), or a test's fake. A slot is `adopt`ed
/// with count 1 when it is handed out, `retain`ed by each further holder, and
/// `release` says when the last holder let go so the slot can be lent again.
///
/// Owned by one thread; not thread-safe by design.
public final class BufferPool {
    public let slotSize: Int
    public let slotCount: Int
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    /// Slots per segment; the last segment may be shorter.
    public let segmentSlots: Int
    private let references: UnsafeMutablePointer<UInt32>
    /// Slots with at least one holder.
    public var inUse: Int { _inUse }
    /// Changes per receive: private storage (docs/contributing.md, "Private storage, public reads").
    private var _inUse = 0

    /// - Parameters:
    ///   - slotSize: rounded up to whole pages.
    /// - Throws: `SystemCallError` when the memory cannot be had.
    ///   - slotCount: at most 65535 (a provided buffer's id is 16 bits).
    public init(slotSize: Int, slotCount: Int) throws {
        precondition(slotSize > 0 && slotCount > 0 && slotCount < Int(UInt16.max))
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let alignedSlot = (slotSize + pageSize - 1) / pageSize * pageSize
        self.slotSize = alignedSlot
        self.slotCount = slotCount
        byteCount = alignedSlot * slotCount
        segmentSlots = max(1, Self.segmentBytes / alignedSlot)
        let memory = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let memory, memory != MAP_FAILED else {
            throw SystemCallError(operation: "mmap of a \(alignedSlot * slotCount)-byte buffer pool", errorNumber: errno)
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

    /// The unit of growth and registration: 1 MiB, or one slot if larger.
    public static let segmentBytes = 1 << 20

    public var segmentCount: Int { (slotCount + segmentSlots - 1) / segmentSlots }

    /// The slots of segment `index`.
    public func segment(_ index: Int) -> Range<Int> {
        index * segmentSlots..<min(slotCount, (index + 1) * segmentSlots)
    }

    /// Takes a free slot that was just handed out: its count becomes 1.
    @inline(__always)
    public func adopt(_ slot: UInt32) {
        precondition(references[Int(slot)] == 0, "adopt of a held slot")
        references[Int(slot)] = 1
        _inUse &+= 1
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
        _inUse &-= 1
        return true
    }

    @inline(__always)
    public func referenceCount(_ slot: UInt32) -> Int { Int(references[Int(slot)]) }

    @inline(__always)
    public func pointer(_ slot: UInt32) -> UnsafeMutableRawPointer {
        base + Int(slot) &* slotSize
    }
}
