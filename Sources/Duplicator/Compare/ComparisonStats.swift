import Synchronization

/// `--compare` counters of one mirror, in one worker: one verdict per
/// (session, mirror), and where diverging replies first differed.
public final class ComparisonStats: Sendable {
    /// Upper bounds of the first-divergence offset histogram's buckets, in
    /// bytes; a last bucket takes the rest (+Inf). Powers of 16: "in the
    /// first reply" reads apart from "a megabyte into the stream".
    public static let divergenceOffsetBounds: [UInt64] = [16, 256, 4096, 65536, 1 << 20, 16 << 20]

    private let match = Atomic<UInt64>(0)
    private let diverged = Atomic<UInt64>(0)
    private let shorter = Atomic<UInt64>(0)
    private let longer = Atomic<UInt64>(0)
    private let incomplete = Atomic<UInt64>(0)
    private let offsetAtMost16 = Atomic<UInt64>(0)
    private let offsetAtMost256 = Atomic<UInt64>(0)
    private let offsetAtMost4KiB = Atomic<UInt64>(0)
    private let offsetAtMost64KiB = Atomic<UInt64>(0)
    private let offsetAtMost1MiB = Atomic<UInt64>(0)
    private let offsetAtMost16MiB = Atomic<UInt64>(0)
    private let offsetBeyond = Atomic<UInt64>(0)
    /// The sum of first-divergence offsets (the histogram's `_sum`).
    public let divergenceOffsetSum = Atomic<UInt64>(0)

    public init() {}

    /// One (session, mirror) pair's verdict (by the worker thread only).
    func record(_ verdict: ReplyComparison.Verdict, divergenceOffset: UInt64) {
        switch verdict {
        case .match: match.bump()
        case .diverged:
            diverged.bump()
            divergenceOffsetSum.bump(Int(truncatingIfNeeded: divergenceOffset))
            switch divergenceOffset {
            case ...16: offsetAtMost16.bump()
            case ...256: offsetAtMost256.bump()
            case ...4096: offsetAtMost4KiB.bump()
            case ...65536: offsetAtMost64KiB.bump()
            case ...(1 << 20): offsetAtMost1MiB.bump()
            case ...(16 << 20): offsetAtMost16MiB.bump()
            default: offsetBeyond.bump()
            }
        case .shorter: shorter.bump()
        case .longer: longer.bump()
        case .incomplete: incomplete.bump()
        }
    }

    public func count(_ verdict: ReplyComparison.Verdict) -> UInt64 {
        switch verdict {
        case .match: match.value
        case .diverged: diverged.value
        case .shorter: shorter.value
        case .longer: longer.value
        case .incomplete: incomplete.value
        }
    }

    /// Diverged pairs per offset bucket (not cumulative), `divergenceOffsetBounds` then +Inf.
    public var divergenceOffsetBuckets: [UInt64] {
        [offsetAtMost16.value, offsetAtMost256.value, offsetAtMost4KiB.value, offsetAtMost64KiB.value,
         offsetAtMost1MiB.value, offsetAtMost16MiB.value, offsetBeyond.value]
    }
}
