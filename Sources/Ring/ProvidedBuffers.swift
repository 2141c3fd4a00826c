import CLiburing

/// The slots of a `BufferPool` lent to the kernel through a provided buffer
/// ring (buffer group): a recv with `selectBuffer` takes a slot only when
/// data arrives, so an idle connection holds no memory. The completion says
/// which slot (`Completion.selectedBuffer`); when its last holder releases it,
/// `provide` lends it again. Returns are batched: `provide` writes the entry,
/// `commit` publishes all of them with one store-release before submitting.
public final class ProvidedBuffers {
    public let group: UInt16
    public let entries: UInt32
    private let bufferRing: UnsafeMutablePointer<io_uring_buf_ring>
    private let mask: Int32
    private let pool: BufferPool
    private let ring: Ring
    private var pending: Int32 = 0
    /// Slots lent to the kernel now.
    public private(set) var lent = 0

    /// Registers a buffer ring for `pool` (its slot count must be a power of
    /// two) and lends it every slot.
    public init(ring: Ring, pool: BufferPool, group: UInt16 = 0) throws {
        precondition(pool.slotCount & (pool.slotCount - 1) == 0, "slot count must be a power of two")
        var error: Int32 = 0
        guard let bufferRing = shim_setup_buf_ring(&ring.ring, UInt32(pool.slotCount), Int32(group), &error) else {
            throw RingError("io_uring_register_buf_ring with \(pool.slotCount) entries", errno: error)
        }
        self.bufferRing = bufferRing
        self.group = group
        self.entries = UInt32(pool.slotCount)
        self.mask = shim_buf_ring_mask(UInt32(pool.slotCount))
        self.pool = pool
        self.ring = ring
        for slot in 0..<pool.slotCount { provide(UInt32(slot)) }
        commit()
    }

    deinit {
        shim_free_buf_ring(&ring.ring, bufferRing, entries, Int32(group))
    }

    /// Lends `slot` to the kernel again (visible after `commit`).
    @inline(__always)
    public func provide(_ slot: UInt32) {
        io_uring_buf_ring_add(bufferRing, pool.pointer(slot), UInt32(pool.slotSize), UInt16(slot), mask, pending)
        pending &+= 1
        lent &+= 1
    }

    /// The kernel chose `slot` for a completion: it is ours until provided again.
    @inline(__always)
    public func taken(_ slot: UInt32) { lent &-= 1 }

    @inline(__always)
    public func commit() {
        guard pending > 0 else { return }
        io_uring_buf_ring_advance(bufferRing, pending)
        pending = 0
    }
}
