import Glibc
import Logging
import Platform
import Ring
import Synchronization

/// The health of each mirror, one state per mirror shared by every worker:
/// connect failures in a row from any worker put the mirror to rest for all
/// of them, a connect from any worker ends the rest for all, and the warnings
/// about a mirror are limited to one line per interval for the whole process
/// (with `--threads 4`, per-worker state logged 8 lines in 3 s for one
/// refused mirror, and each worker backed off on its own).
///
/// Workers touch it once per mirror per new session and once per tick: a
/// lock that is almost never contended, off the per-byte path.
public final class MirrorHealth: Sendable {
    private struct Mirror {
        var failuresInARow = 0
        var restUntilMs: UInt64 = 0
        /// The errno of the latest connect failure, for the log.
        var lastConnectErrno: Int32 = 0
        /// The counters (summed over the workers) as of the last warning.
        var logged = Logged()
        var loggedFailing = false
        var limiter: RateLimitedLog
    }

    private struct Logged {
        var connectFailures: UInt64 = 0
        var connectTimeouts: UInt64 = 0
        var errors: UInt64 = 0
        var cuts: UInt64 = 0
        var poolShareCuts: UInt64 = 0
    }

    private let state: Mutex<[Mirror]>
    private let failuresBeforeBackoff: Int
    private let backoffInitialMs: Int
    private let backoffMaxMs: Int

    public init(mirrorCount: Int, failuresBeforeBackoff: Int = 3, backoffInitialMs: Int = 250,
                backoffMaxMs: Int = 30_000, logIntervalMs: UInt64 = 10_000) {
        state = Mutex(Array(repeating: Mirror(limiter: RateLimitedLog(intervalMs: logIntervalMs)), count: mirrorCount))
        self.failuresBeforeBackoff = failuresBeforeBackoff
        self.backoffInitialMs = backoffInitialMs
        self.backoffMaxMs = backoffMaxMs
    }

    convenience init(_ limits: SessionLimits) {
        self.init(mirrorCount: limits.mirrorCount, failuresBeforeBackoff: limits.mirrorFailuresBeforeBackoff,
                  backoffInitialMs: limits.mirrorBackoffInitialMs, backoffMaxMs: limits.mirrorBackoffMaxMs)
    }

    // MARK: Back-off

    /// Whether new sessions should try mirror `index` at `nowMs`.
    public func isTried(_ index: Int, nowMs: UInt64) -> Bool {
        state.withLock { nowMs >= $0[index].restUntilMs }
    }

    /// Failed enough times in a row to be backed off (resting or being probed).
    public func isFailing(_ index: Int) -> Bool {
        state.withLock { $0[index].failuresInARow >= failuresBeforeBackoff }
    }

    func connected(_ index: Int) {
        state.withLock {
            $0[index].failuresInARow = 0
            $0[index].restUntilMs = 0
        }
    }

    /// After `failuresBeforeBackoff` failures in a row the mirror rests for an
    /// exponentially growing, capped time; the first sessions after that
    /// probe it again.
    func connectFailed(_ index: Int, errno: Int32, nowMs: UInt64) {
        state.withLock { mirrors in
            mirrors[index].lastConnectErrno = errno
            mirrors[index].failuresInARow += 1
            let beyond = mirrors[index].failuresInARow - failuresBeforeBackoff
            guard beyond >= 0 else { return }
            let restMs = min(backoffInitialMs << min(beyond, 20), backoffMaxMs)
            mirrors[index].restUntilMs = nowMs + UInt64(restMs)
        }
    }

    // MARK: Log

    /// Logs what went wrong with each mirror since its last warning, summed
    /// over `workers`: at most one warning per mirror per interval, whichever
    /// worker's tick gets here first. Starting to back off, and coming back,
    /// are logged once each.
    func log(workers: [WorkerStats], names: [String], nowMs: UInt64, logger: Logger) {
        var lines: [(warning: Bool, text: String)] = []
        state.withLock { mirrors in
            for index in mirrors.indices {
                let name = names[index]
                let failing = mirrors[index].failuresInARow >= failuresBeforeBackoff
                if failing != mirrors[index].loggedFailing {
                    mirrors[index].loggedFailing = failing
                    lines.append(failing
                        ? (true, "mirror \(name): backing off after repeated connect failures; probing it now and then")
                        : (false, "mirror \(name): connected again, mirroring new sessions"))
                }
                var now = Logged()
                for worker in workers {
                    let mirror = worker.mirrors[index]
                    now.connectFailures &+= mirror.connectFailures.value
                    now.connectTimeouts &+= mirror.connectTimeouts.value
                    now.errors &+= mirror.errors.value
                    now.cuts &+= mirror.sessionsCutForLag.value
                    now.poolShareCuts &+= mirror.sessionsCutForPoolShare.value
                }
                let before = mirrors[index].logged
                let failures = now.connectFailures &- before.connectFailures
                let timeouts = now.connectTimeouts &- before.connectTimeouts
                let errors = now.errors &- before.errors
                let cuts = now.cuts &- before.cuts
                let poolShareCuts = now.poolShareCuts &- before.poolShareCuts
                guard failures + timeouts + errors + cuts + poolShareCuts > 0,
                      mirrors[index].limiter.allow(nowMs: nowMs) else { continue }
                var parts: [String] = []
                if failures > 0 {
                    let reason = mirrors[index].lastConnectErrno
                    parts.append(Counted.text(failures, "connect failure") + (reason > 0 ? " (last: \(Self.describe(reason)))" : ""))
                }
                if timeouts > 0 { parts.append(Counted.text(timeouts, "connect timeout")) }
                if errors > 0 { parts.append(Counted.text(errors, "connection error")) }
                if cuts > 0 { parts.append(Counted.text(cuts, "session") + " cut for lagging more than their backlog behind") }
                if poolShareCuts > 0 {
                    parts.append(Counted.text(poolShareCuts, "session") + " cut because mirrors held their share of the buffer pool (raise --max-memory)")
                }
                lines.append((true, "mirror \(name): \(parts.joined(separator: ", "))"))
                mirrors[index].logged = now
            }
        }
        // Outside the lock: a slow stderr must not hold the other workers.
        for line in lines {
            if line.warning { logger.warning("\(line.text)") } else { logger.notice("\(line.text)") }
        }
    }

    /// ELOOP is what the loop guard fails a looped connect with.
    static func describe(_ reason: Int32) -> String {
        reason == ELOOP ? "its connections loop back into this proxy" : SystemCallError.describe(errorNumber: reason)
    }
}
