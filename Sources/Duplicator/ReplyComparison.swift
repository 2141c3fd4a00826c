import Glibc

/// Whether a mirror's reply stream equals main's, for one session: the
/// bytes of each are compared as they arrive, however TCP split them.
///
/// Only the part of the leading stream that the other has not reached yet is
/// kept, in a fixed window (a ring); bytes both streams have are compared and
/// forgotten. When one stream runs more than the window ahead, the pair
/// cannot be compared within its bound: `incomplete`. A verdict is decided
/// as soon as it is certain (the first differing byte, or one stream going
/// past the other's end) and then nothing more is kept or compared.
///
/// A value type over memory its owner provides (`window`), so that the
/// session table can lay out every pair's window at start; no allocation.
public struct ReplyComparison {
    public enum Verdict: Int, Sendable, CaseIterable {
        case match, diverged, shorter, longer, incomplete

        /// The metric label.
        public var label: String {
            switch self {
            case .match: "match"
            case .diverged: "diverged"
            case .shorter: "shorter"
            case .longer: "longer"
            case .incomplete: "incomplete"
            }
        }
    }

    public enum Stream: Sendable { case main, mirror }

    private let window: UnsafeMutableRawPointer
    public let windowBytes: Int
    /// Where the kept bytes begin in the window, and how many there are.
    private var start = 0
    public private(set) var pendingBytes = 0
    /// The stream whose bytes are kept (meaningful while `pendingBytes` > 0).
    private var ahead = Stream.main
    /// Bytes both streams have, and that are equal.
    public private(set) var matchedBytes: UInt64 = 0
    private var mainEnded = false
    private var mirrorEnded = false
    public private(set) var decided: Verdict?
    /// With `diverged`: the offset of the first byte that differs.
    public private(set) var divergenceOffset: UInt64 = 0

    public init(window: UnsafeMutableRawPointer, windowBytes: Int) {
        precondition(windowBytes > 0)
        self.window = window
        self.windowBytes = windowBytes
    }

    /// Forgets everything: a new session.
    public mutating func reset() {
        start = 0
        pendingBytes = 0
        matchedBytes = 0
        mainEnded = false
        mirrorEnded = false
        decided = nil
        divergenceOffset = 0
    }

    /// The verdict once both streams are over (or will never be compared
    /// further): a decided one, or what their ends say; `incomplete` when a
    /// stream did not end.
    public var verdict: Verdict {
        if let decided { return decided }
        guard mainEnded && mirrorEnded else { return .incomplete }
        if pendingBytes == 0 { return .match }
        return ahead == .main ? .shorter : .longer
    }

    /// Still taking bytes (no verdict decided yet).
    @inline(__always)
    public var isOpen: Bool { decided == nil }

    /// The pair cannot be compared (the mirror was cut, failed, or its
    /// replies could not be read): `incomplete`, unless already decided.
    public mutating func abandon() {
        if decided == nil { decide(.incomplete) }
    }

    /// `stream` sent EOF: its reply is over.
    public mutating func end(_ stream: Stream) {
        guard decided == nil else { return }
        switch stream {
        case .main: mainEnded = true
        case .mirror: mirrorEnded = true
        }
        // The other stream already has bytes past this end.
        if pendingBytes > 0 && ahead != stream { decide(Self.past(ahead)) }
    }

    /// Bytes of `stream`, in order.
    public mutating func append(_ stream: Stream, _ bytes: UnsafeRawBufferPointer) {
        guard decided == nil, var source = bytes.baseAddress else { return }
        var count = bytes.count
        if pendingBytes > 0 && ahead != stream {
            // The other stream is ahead: compare with what it left.
            let compared = min(count, pendingBytes)
            if let difference = firstDifference(source, compared) {
                divergenceOffset = matchedBytes + UInt64(difference)
                decide(.diverged)
                return
            }
            matchedBytes += UInt64(compared)
            pendingBytes -= compared
            start = pendingBytes == 0 ? 0 : (start + compared) % windowBytes
            source += compared
            count -= compared
            if count == 0 { return }
        }
        // `stream` is now ahead, or level: keep its bytes for the other.
        let otherEnded = stream == .main ? mirrorEnded : mainEnded
        if otherEnded {
            decide(Self.past(stream))
            return
        }
        guard pendingBytes + count <= windowBytes else {
            decide(.incomplete)
            return
        }
        ahead = stream
        var end = (start + pendingBytes) % windowBytes
        pendingBytes += count
        while count > 0 {
            let piece = min(count, windowBytes - end)
            (window + end).copyMemory(from: source, byteCount: piece)
            source += piece
            count -= piece
            end = 0
        }
    }

    /// `stream` has bytes past the other's end.
    private static func past(_ stream: Stream) -> Verdict { stream == .mirror ? .longer : .shorter }

    private mutating func decide(_ verdict: Verdict) {
        decided = verdict
        pendingBytes = 0
        start = 0
    }

    /// The index of the first of `count` bytes at `source` that differs
    /// from the kept bytes, or nil.
    private func firstDifference(_ source: UnsafeRawPointer, _ count: Int) -> Int? {
        var done = 0
        var position = start
        while done < count {
            let piece = min(count - done, windowBytes - position)
            if memcmp(window + position, source + done, piece) != 0 {
                let kept = (window + position).assumingMemoryBound(to: UInt8.self)
                let given = (source + done).assumingMemoryBound(to: UInt8.self)
                for index in 0..<piece where kept[index] != given[index] { return done + index }
            }
            done += piece
            position = 0
        }
        return nil
    }
}
