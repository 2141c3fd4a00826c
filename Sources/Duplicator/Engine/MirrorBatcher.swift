/// A mirror is a throughput leg: its queued chunks go out together in one
/// gathered send once `mirrorBatchBytes` wait, the oldest has waited
/// `mirrorBatchDelayUs`, or the stream ends; until then the session asks to
/// be woken at the deadline. Its reader wakes once per batch instead of
/// once per client receive. One per mirror leg; no IO: `decide` says what
/// to send, the session sends it.
struct MirrorBatcher {
    /// A deadline that has passed, whatever the clock says.
    static let dueNow: UInt64 = 1

    /// What the leg's queue should do now.
    enum Decision: Equatable {
        /// Nothing yet: wake the session at this deadline.
        case wait(untilUs: UInt64)
        /// The first `chunks` chunks, `bytes` bytes, in one send.
        case send(chunks: Int, bytes: Int)
    }

    /// When the oldest unsent byte must go out (0: none waits; `dueNow`: at once).
    private(set) var deadlineUs: UInt64 = 0

    /// Bytes were queued: the batch's clock starts with the oldest.
    @inline(__always)
    mutating func queued(nowUs: UInt64, delayUs: Int) {
        if deadlineUs == 0 { deadlineUs = nowUs &+ UInt64(delayUs) }
    }

    /// A send took less than it was given: the rest is due as soon as it completes.
    @inline(__always)
    mutating func sentShort() {
        deadlineUs = Self.dueNow
    }

    /// Whether `queue` (not empty) goes out now, and how much of it:
    /// at most `chunksMax` chunks and `bytesMax` bytes (the end of a kept
    /// turn: due at once, since the client has waited for main's answer to it).
    /// `streamEnds`: the FIN waits behind these bytes.
    @inline(__always)
    mutating func decide(queue: SendQueue, batchBytes: Int, delayUs: Int, nowUs: UInt64, streamEnds: Bool,
                         bytesMax: Int, chunksMax: Int) -> Decision {
        queued(nowUs: nowUs, delayUs: delayUs)
        let due = deadlineUs
        guard streamEnds || queue.bytes >= batchBytes || nowUs >= due || bytesMax < queue.bytes else {
            return .wait(untilUs: due)
        }
        var chunks = 0
        var length = 0
        while chunks < min(queue.count, chunksMax) {
            let next = Int(queue.chunk(at: chunks).length)
            guard length &+ next <= bytesMax else { break }
            length &+= next
            chunks &+= 1
        }
        // What this send leaves behind is due as soon as it completes (a
        // kept turn's start waits for the mirror's answer instead).
        deadlineUs = chunks == queue.count ? 0 : Self.dueNow
        return .send(chunks: chunks, bytes: length)
    }
}
