/// One direction of a TCP connection put back in order: the bytes the
/// receiver's application read, each piece with the time the capture first
/// saw it. Segments may come in any order, be retransmitted, overlap or
/// repeat; bytes already taken are never taken again (the first copy wins,
/// as the receiver's stack keeps it). Pure.
///
/// Offsets are 64-bit and relative to the first data byte (the SYN's
/// sequence number plus one), unwrapped around where the stream is, so a
/// stream past 4 GiB (sequence numbers wrap) still reassembles.
public struct StreamReassembler: Sendable {
    /// The sequence number of the first data byte; nil until the sender's SYN is seen.
    public private(set) var firstSequence: UInt32?
    /// The bytes in order, as far as they are contiguous.
    public private(set) var bytes: [UInt8] = []
    /// Where each piece ends in `bytes`, and when it was captured.
    public private(set) var pieceEnds: [Int] = []
    public private(set) var pieceTimesUs: [UInt64] = []
    /// Segments past a hole, waiting for it to fill: offset, bytes, time.
    private var pending: [(offset: Int64, bytes: [UInt8], timeUs: UInt64)] = []
    /// The offset of the sender's FIN, once seen.
    public private(set) var finOffset: Int64?
    /// Segments whose bytes were all taken already (retransmits, duplicates).
    public private(set) var duplicateSegments = 0
    /// Segments that arrived ahead of a hole.
    public private(set) var outOfOrderSegments = 0
    /// Payload bytes the capture's snap length cut off.
    public private(set) var bytesCut = 0
    /// Segments seen before the SYN gave the stream its start (a capture
    /// reordered): placed when it comes.
    private var early: [(sequence: UInt32, bytes: [UInt8], cutBytes: Int, fin: Bool, timeUs: UInt64)] = []

    public init() {}

    /// The sender's SYN (or SYN-ACK): the stream starts after its sequence number.
    /// A repeated SYN (retransmitted) changes nothing.
    public mutating func start(synSequence: UInt32) {
        guard firstSequence == nil else { return }
        firstSequence = synSequence &+ 1
        let waiting = early
        early = []
        for segment in waiting {
            segment.bytes.withUnsafeBytes {
                add(sequence: segment.sequence, payload: $0, cutBytes: 0, fin: segment.fin, timeUs: segment.timeUs)
            }
        }
    }

    /// Bytes past a hole that never filled (the capture missed some of the
    /// stream), or bytes whose stream never started (no SYN seen).
    public var hasHole: Bool { !pending.isEmpty || !early.isEmpty }

    /// Where `sequence` falls, relative to the first byte, unwrapped near the current end.
    func offset(of sequence: UInt32) -> Int64? {
        guard let firstSequence else { return nil }
        let end = Int64(bytes.count)
        let endSequence = firstSequence &+ UInt32(truncatingIfNeeded: end)
        return end + Int64(Int32(bitPattern: sequence &- endSequence))
    }

    /// One segment's payload (`cutBytes`: what the snap length cut of it) and flags.
    public mutating func add(sequence: UInt32, payload: UnsafeRawBufferPointer, cutBytes: Int, fin: Bool, timeUs: UInt64) {
        bytesCut += cutBytes
        guard let start = offset(of: sequence) else {
            if !payload.isEmpty || fin { early.append((sequence, Array(payload), cutBytes, fin, timeUs)) }
            return
        }
        if fin, finOffset == nil {
            // The FIN takes the sequence number after the segment's whole payload, cut or not.
            finOffset = start + Int64(payload.count + cutBytes)
        }
        guard !payload.isEmpty else { return }
        let end = start + Int64(payload.count)
        let taken = Int64(bytes.count)
        if end <= taken {
            duplicateSegments += 1
            return
        }
        if start > taken {
            outOfOrderSegments += 1
            pending.append((start, Array(payload), timeUs))
            return
        }
        take(payload, from: Int(taken - start), timeUs: timeUs)
        drainPending()
    }

    private mutating func take(_ payload: UnsafeRawBufferPointer, from skip: Int, timeUs: UInt64) {
        bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: payload[skip...]))
        pieceEnds.append(bytes.count)
        pieceTimesUs.append(timeUs)
    }

    /// Takes every waiting segment that now touches the end, earliest offset first.
    private mutating func drainPending() {
        while !pending.isEmpty {
            let taken = Int64(bytes.count)
            guard let index = pending.indices.filter({ pending[$0].offset <= taken })
                .min(by: { pending[$0].offset < pending[$1].offset }) else { return }
            let entry = pending.remove(at: index)
            let end = entry.offset + Int64(entry.bytes.count)
            if end <= taken {
                duplicateSegments += 1
                continue
            }
            entry.bytes.withUnsafeBytes { take($0, from: Int(taken - entry.offset), timeUs: entry.timeUs) }
        }
    }

    /// Whether the FIN came right after the bytes taken (the stream ended with nothing missing).
    public var endedCleanly: Bool { finOffset == Int64(bytes.count) }
}
