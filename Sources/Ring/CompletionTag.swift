/// The 64-bit `user_data` of every SQE: which operation, on which leg
/// (connection) of which session, of which generation of that session's
/// place in its table. The ring only carries it; the proxy gives the fields
/// their meaning.
///
/// Layout (high to low): kind 8 bits | leg 8 bits | generation 16 bits |
/// session 32 bits. A session's place is reused after it ends; its
/// generation is bumped, so a late completion for the previous occupant
/// carries an old generation and is recognised as stale.
public struct CompletionTag: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable
    public init(kind: UInt8, leg: UInt8, generation: UInt16, session: UInt32) {
        rawValue = UInt64(kind) << 56 | UInt64(leg) << 48 | UInt64(generation) << 32 | UInt64(session)
    }

    @inlinable public var kind: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 56) }
    @inlinable public var leg: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 48) }
    @inlinable public var generation: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 32) }
    /// The session's index in its worker's table (not a buffer slot).
    @inlinable public var session: UInt32 { UInt32(truncatingIfNeeded: rawValue) }

    public var description: String {
        "tag(kind: \(kind), leg: \(leg), generation: \(generation), session: \(session))"
    }
}

/// One reaped completion, copied out of the CQ so the CQ can be advanced in one step.
public struct Completion: Sendable {
    public var tag: CompletionTag
    /// The operation's result: a byte count or descriptor when >= 0, a negated errno when < 0.
    public var result: Int32
    /// The CQE flags (`IORING_CQE_F_MORE`, `IORING_CQE_F_NOTIF`, ...).
    public var flags: UInt32

    @inlinable
    public init(tag: CompletionTag, result: Int32, flags: UInt32) {
        self.tag = tag
        self.result = result
        self.flags = flags
    }

    /// More completions will follow for this multishot operation.
    @inlinable public var hasMore: Bool { flags & Ring.completionFlagMore != 0 }
    /// The provided buffer (slot) the kernel chose for a buffer-select recv.
    @inlinable public var selectedBuffer: UInt32? {
        flags & Ring.completionFlagBuffer != 0 ? flags >> Ring.completionBufferShift : nil
    }
    /// This is a zero-copy send's notification: its buffer is free again.
    @inlinable public var isNotification: Bool { flags & Ring.completionFlagNotification != 0 }
    /// A zero-copy send's notification saying the kernel copied the bytes
    /// after all (as it does towards a local socket).
    @inlinable public var zeroCopyCopied: Bool {
        isNotification && UInt32(bitPattern: result) & Ring.zeroCopyCopiedFlag != 0
    }
}
