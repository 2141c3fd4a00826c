import Glibc
import Logging
import Ring

/// Turns a worker's mirror counters into log lines: at most one warning per
/// mirror per interval, saying what went wrong since the last one, so a dead
/// mirror under heavy traffic costs a line every few seconds, not one per
/// session. A mirror starting to back off, and coming back, is logged once each.
struct MirrorHealthLog {
    private struct Seen {
        var connectFailures: UInt64 = 0
        var connectTimeouts: UInt64 = 0
        var errors: UInt64 = 0
        var cuts: UInt64 = 0
        var poolShareCuts: UInt64 = 0
        var failing = false
        var limiter: RateLimitedLog
    }

    private var seen: [Seen]
    private let names: [String]

    init(names: [String], intervalMs: UInt64 = 10_000) {
        self.names = names
        seen = names.map { _ in Seen(limiter: RateLimitedLog(intervalMs: intervalMs)) }
    }

    mutating func check(stats: WorkerStats, context: SessionContext, logger: Logger) {
        for index in seen.indices {
            let mirror = stats.mirrors[index]
            let name = names[index]
            let failing = context.mirrorIsFailing(index)
            if failing != seen[index].failing {
                seen[index].failing = failing
                if failing {
                    logger.warning("mirror \(name): backing off after repeated connect failures; probing it now and then")
                } else {
                    logger.notice("mirror \(name): connected again, mirroring new sessions")
                }
            }
            let failures = mirror.connectFailures.value &- seen[index].connectFailures
            let timeouts = mirror.connectTimeouts.value &- seen[index].connectTimeouts
            let errors = mirror.errors.value &- seen[index].errors
            let cuts = mirror.sessionsCutForLag.value &- seen[index].cuts
            let poolShareCuts = mirror.sessionsCutForPoolShare.value &- seen[index].poolShareCuts
            guard failures + timeouts + errors + cuts + poolShareCuts > 0, seen[index].limiter.allow(nowMs: context.nowMs) else { continue }
            var parts: [String] = []
            if failures > 0 {
                let reason = context.mirrorLastConnectErrno[index]
                parts.append("\(failures) connect failures" + (reason > 0 ? " (last: \(Self.describe(reason)))" : ""))
            }
            if timeouts > 0 { parts.append("\(timeouts) connect timeouts") }
            if errors > 0 { parts.append("\(errors) connection errors") }
            if cuts > 0 { parts.append("\(cuts) sessions cut for lagging more than their backlog behind") }
            if poolShareCuts > 0 {
                parts.append("\(poolShareCuts) sessions cut because mirrors held their share of the buffer pool (raise --max-memory)")
            }
            logger.warning("mirror \(name): \(parts.joined(separator: ", "))")
            seen[index].connectFailures = mirror.connectFailures.value
            seen[index].connectTimeouts = mirror.connectTimeouts.value
            seen[index].errors = mirror.errors.value
            seen[index].cuts = mirror.sessionsCutForLag.value
            seen[index].poolShareCuts = mirror.sessionsCutForPoolShare.value
        }
    }

    /// ELOOP is what the loop guard fails a looped connect with.
    static func describe(_ reason: Int32) -> String {
        reason == ELOOP ? "its connections loop back into this proxy" : RingError.describe(errno: reason)
    }
}
