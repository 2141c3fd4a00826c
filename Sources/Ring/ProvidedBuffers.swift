import CLiburing

/// Lends the free slots of a `BufferPool` to the kernel through a provided
/// buffer ring (buffer group): a recv with `selectBuffer` takes a slot only
/// when data arrives, so an idle connection holds no memory. The completion
/// says which slot (`Completion.selectedBuffer`); when its last holder
/// releases it, `provide` gives it back.
///
/// Only a window of at most `windowSlots` free slots is lent at a time; the
/// rest wait on a stack, last freed first, and `commit` tops the window up.
/// The kernel takes lent slots in ring order, so lending the whole pool would
/// touch every page of it; with the window, the pages in use are those of
/// the slots actually held plus the window. Slots never used before are
/// taken in order, segment by segment, and each segment is registered with
/// the ring as a fixed buffer when it is first used: the pool grows up to its
/// size, and only as far as the load has needed.
///
/// More recvs completing between two commits than the window holds get
/// -ENOBUFS, and their sessions wait for `commit` (the caller's slow path).
public final class ProvidedBuffers {
    public let group: UInt16
    /// The buffer ring's size: the window rounded up to a power of two.
    public let entries: UInt32
    public let windowSlots: Int
    private let bufferRing: UnsafeMutablePointer<io_uring_buf_ring>
    private let mask: Int32
    private let pool: BufferPool
    private let ring: Ring
    private let registersSegments: Bool
    private var pending: Int32 = 0
    /// Free slots not lent to the kernel, the most recently freed on top.
    private let freeStack: UnsafeMutablePointer<UInt32>
    private var freeCount = 0
    // Private storage behind the public counters; `lent` changes on every
    // receive (docs/contributing.md, "Private storage, public reads").
    private var _grownSlots = 0
    private var _lent = 0
    private var refusal: RingError?
    /// Slots below this index belong to segments in use; the rest were never used.
    public var grownSlots: Int { _grownSlots }
    /// Slots lent to the kernel now.
    public var lent: Int { _lent }
    /// Why the pool stopped growing before its size (registration refused,
    /// e.g. RLIMIT_MEMLOCK), if it did.
    public var growthError: RingError? { refusal }

    /// Registers a buffer ring for `pool`, and a sparse table of fixed
    /// buffers (one per segment) when `registerSegments`; lends the first window.
    public init(ring: Ring, pool: BufferPool, group: UInt16 = 0, windowSlots: Int = 512,
                registerSegments: Bool = false) throws {
        let window = max(1, min(windowSlots, pool.slotCount))
        var entries = 1
        while entries < window { entries <<= 1 }
        var error: Int32 = 0
        guard let bufferRing = shim_setup_buf_ring(ring.ring, UInt32(entries), Int32(group), &error) else {
            throw RingError("io_uring_register_buf_ring with \(entries) entries", errno: error)
        }
        self.bufferRing = bufferRing
        self.group = group
        self.entries = UInt32(entries)
        self.windowSlots = window
        self.mask = shim_buf_ring_mask(UInt32(entries))
        self.pool = pool
        self.ring = ring
        self.registersSegments = registerSegments
        freeStack = .allocate(capacity: pool.slotCount)
        if registerSegments {
            do {
                try ring.registerBufferTable(count: pool.segmentCount)
                // The first segment at once: a limit too low for even that is an error at start.
                try grow()
            } catch {
                shim_free_buf_ring(ring.ring, bufferRing, UInt32(entries), Int32(group))
                freeStack.deallocate()
                throw error
            }
        }
        commit()
    }

    deinit {
        shim_free_buf_ring(ring.ring, bufferRing, entries, Int32(group))
        freeStack.deallocate()
    }

    /// Slots no one holds: lent, waiting on the stack, or never used.
    public var available: Int { lent + freeCount + (pool.slotCount - grownSlots) }

    /// `slot`'s last holder let it go: it can be lent again (after `commit`).
    @inline(__always)
    public func provide(_ slot: UInt32) {
        freeStack[freeCount] = slot
        freeCount &+= 1
    }

    /// A free slot that is not lent to the kernel, taken for bytes no
    /// receive brought; it comes back with `provide`. Nil when every free
    /// slot is lent (or the pool cannot grow).
    public func takeFree() -> UInt32? { nextFree() }

    /// The kernel chose `slot` for a completion: it is ours until provided again.
    @inline(__always)
    public func taken(_ slot: UInt32) { _lent &-= 1 }

    /// Tops the window up and publishes it with one store-release; call
    /// before submitting.
    @inline(__always)
    public func commit() {
        while lent < windowSlots, let slot = nextFree() {
            io_uring_buf_ring_add(bufferRing, pool.pointer(slot), UInt32(pool.slotSize), UInt16(slot), mask, pending)
            pending &+= 1
            _lent &+= 1
        }
        guard pending > 0 else { return }
        io_uring_buf_ring_advance(bufferRing, pending)
        pending = 0
    }

    @inline(__always)
    private func nextFree() -> UInt32? {
        if freeCount > 0 {
            freeCount &-= 1
            return freeStack[freeCount]
        }
        guard grownSlots < pool.slotCount, growthError == nil else { return nil }
        do { try grow() } catch { return nil }
        freeCount &-= 1
        return freeStack[freeCount]
    }

    /// Takes the next segment into use: registers it, stacks its slots.
    private func grow() throws {
        let segment = grownSlots / pool.segmentSlots
        let slots = pool.segment(segment)
        if registersSegments {
            do {
                try ring.registerBuffer(at: segment, base: pool.pointer(UInt32(slots.lowerBound)),
                                        length: slots.count * pool.slotSize)
            } catch let error as RingError {
                refusal = error
                throw error
            }
        }
        // Lowest slot on top, so slots are used in order.
        for slot in slots.reversed() {
            freeStack[freeCount] = UInt32(slot)
            freeCount += 1
        }
        _grownSlots = slots.upperBound
    }
}
