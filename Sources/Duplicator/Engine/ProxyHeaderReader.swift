import Ring

/// `--accept-proxy`: the client's PROXY protocol header, read before
/// anything else of the session. A header may come in pieces: the first
/// piece's slot is held and the next pieces are joined into it, up to the
/// protocol's bound. No IO: the session gives it each piece and acts on the
/// step it returns (forward, read more, refuse).
struct ProxyHeaderReader {
    /// What one piece made of the header.
    enum Step {
        /// Not whole yet: read more. `releaseSlot`: the piece was joined to
        /// the held one, give its slot back (else the reader holds it).
        case incomplete(releaseSlot: Bool)
        case invalid(ProxyProtocol.Failure)
        /// Whole: the piece's bytes from `bytesAfter` on follow the header
        /// (the client's first bytes); `addresses` nil: a LOCAL header.
        case complete(bytesAfter: Int, addresses: ProxyAddresses?)
    }

    /// The header has not been read whole yet.
    private(set) var isAwaiting = false
    /// ... and must be by then.
    private(set) var deadlineMs: UInt64 = 0
    /// A slot holding the first bytes of a header that came in pieces, and how many.
    private(set) var heldSlot: UInt32?
    private var heldBytes = 0

    /// A new client: its header is due by `deadlineMs`.
    mutating func begin(deadlineMs: UInt64) {
        self = ProxyHeaderReader()
        isAwaiting = true
        self.deadlineMs = deadlineMs
    }

    /// The header is still awaited past its deadline.
    func isOverdue(nowMs: UInt64) -> Bool { isAwaiting && nowMs >= deadlineMs }

    /// A piece of `length` bytes arrived in `slot`.
    mutating func read(slot: UInt32, length: Int, pool: BufferPool) -> Step {
        let before = heldBytes
        let parseStart: UnsafeMutableRawPointer
        if let held = heldSlot {
            let taken = min(length, ProxyProtocol.headerBytesMax - before)
            (pool.pointer(held) + before).copyMemory(from: pool.pointer(slot), byteCount: taken)
            heldBytes += taken
            parseStart = pool.pointer(held)
        } else {
            heldBytes = min(length, ProxyProtocol.headerBytesMax)
            parseStart = pool.pointer(slot)
        }
        switch ProxyProtocol.parse(UnsafeRawBufferPointer(start: parseStart, count: heldBytes)) {
        case .incomplete:
            // Shorter than the longest header (or parse would have refused it): keep the piece.
            guard heldSlot == nil else { return .incomplete(releaseSlot: true) }
            heldSlot = slot
            return .incomplete(releaseSlot: false)
        case .invalid(let failure):
            return .invalid(failure)
        case .complete(let headerLength, let addresses):
            return .complete(bytesAfter: headerLength - before, addresses: addresses)
        }
    }

    /// The header is no longer awaited (read whole, or the session ends).
    /// Returns the slot it held, for the caller to give back.
    mutating func stop() -> UInt32? {
        let held = heldSlot
        isAwaiting = false
        heldSlot = nil
        heldBytes = 0
        return held
    }
}
