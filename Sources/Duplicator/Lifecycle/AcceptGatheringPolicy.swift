/// When new clients go to one worker and when to all (`AcceptGathering`),
/// pure: it takes each worker's busy fraction as the worker's tick measures
/// it (thread CPU time over the tick's wall time) and says when the mode
/// changes. Why gather at all: below saturation two rings each woken for half
/// the requests pay two wakeups where one would do (BENCHMARKS.md, issue 26);
/// one ring that stays busy coalesces its completions.
///
/// - Gathered: spread at once, on the first tick a worker is busy for more
///   than `spreadBusyMin` of it, or one worker's session table is half full
///   (the gathered worker must never refuse a client another could take).
/// - Spread: gather again only once the workers' busy fractions together
///   have stayed at or below `gatherBusyMax` for `quietMs` (so the one
///   worker that takes them all would still be far below `spreadBusyMin`).
/// - No flapping: a spread that comes within `flapWindowMs` of the gather
///   before it doubles the quiet needed for the next gather (up to
///   `quietMaxMs`); a gather that lasts longer brings it back to `quietMs`.
public struct AcceptGatheringPolicy: Sendable, Equatable {
    public enum Mode: Sendable, Equatable { case gathered, spread }

    public struct Thresholds: Sendable, Equatable {
        /// A worker busier than this (of one CPU, over a tick) makes the workers spread.
        public var spreadBusyMin: Double
        /// The workers together at most this busy may gather.
        public var gatherBusyMax: Double
        public var quietMs: UInt64
        public var quietMaxMs: UInt64
        public var flapWindowMs: UInt64

        public init(spreadBusyMin: Double = 0.5, gatherBusyMax: Double = 0.25, quietMs: UInt64 = 2_000,
                    quietMaxMs: UInt64 = 60_000, flapWindowMs: UInt64 = 30_000) {
            self.spreadBusyMin = spreadBusyMin
            self.gatherBusyMax = gatherBusyMax
            self.quietMs = quietMs
            self.quietMaxMs = quietMaxMs
            self.flapWindowMs = flapWindowMs
        }
    }

    public let thresholds: Thresholds
    public private(set) var mode: Mode = .gathered
    /// The quiet the next gather needs: `quietMs`, doubled by each flap.
    public private(set) var quietNeededMs: UInt64
    /// Each worker's latest busy fraction, and whether its table is half full.
    private var busy: [Double]
    private var halfFull: [Bool]
    /// Since when the workers together have been quiet (while spread).
    private var quietSinceMs: UInt64?
    /// Since when the workers have been gathered by this policy (nil at start: not a flap).
    private var gatheredSinceMs: UInt64?

    public init(workers: Int, thresholds: Thresholds = Thresholds()) {
        self.thresholds = thresholds
        quietNeededMs = thresholds.quietMs
        busy = Array(repeating: 0, count: workers)
        halfFull = Array(repeating: false, count: workers)
    }

    /// Worker `worker` measured `busy` over its last tick; the new mode if it changes.
    public mutating func observe(worker: Int, busy fraction: Double, tableHalfFull: Bool, nowMs: UInt64) -> Mode? {
        guard busy.indices.contains(worker) else { return nil }
        busy[worker] = fraction
        halfFull[worker] = tableHalfFull
        switch mode {
        case .gathered:
            guard fraction > thresholds.spreadBusyMin || tableHalfFull else { return nil }
            let flapped = gatheredSinceMs.map { nowMs &- $0 < thresholds.flapWindowMs } ?? false
            quietNeededMs = flapped ? min(thresholds.quietMaxMs, quietNeededMs * 2) : thresholds.quietMs
            return change(to: .spread, nowMs: nowMs)
        case .spread:
            let total = busy.reduce(0, +)
            guard total <= thresholds.gatherBusyMax && !halfFull.contains(true) else {
                quietSinceMs = nil
                return nil
            }
            let since = quietSinceMs ?? nowMs
            quietSinceMs = since
            guard nowMs &- since >= quietNeededMs else { return nil }
            return change(to: .gathered, nowMs: nowMs)
        }
    }

    private mutating func change(to new: Mode, nowMs: UInt64) -> Mode {
        mode = new
        gatheredSinceMs = new == .gathered ? nowMs : nil
        quietSinceMs = nil
        return new
    }
}
