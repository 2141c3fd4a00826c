/// Lets one message of a kind through per interval and counts the rest, so
/// a dead mirror or a descriptor shortage cannot flood the log.
struct RateLimitedLog {
    let intervalMs: UInt64
    private var nextAllowedMs: UInt64 = 0
    private(set) var suppressed = 0
    private var reportedSuppressed = 0

    init(intervalMs: UInt64) { self.intervalMs = intervalMs }

    mutating func allow(nowMs: UInt64) -> Bool {
        guard nowMs >= nextAllowedMs else {
            suppressed += 1
            return false
        }
        nextAllowedMs = nowMs + intervalMs
        reportedSuppressed = suppressed
        suppressed = 0
        return true
    }

    /// " (N more like it not logged)" for the message just allowed, or "".
    var suppressedNote: String {
        reportedSuppressed > 0 ? " (\(reportedSuppressed) more like it not logged)" : ""
    }
}
