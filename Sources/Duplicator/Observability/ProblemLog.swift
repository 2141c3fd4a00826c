import Logging
import Platform
import Ring
import Synchronization

/// The failures an operator must act on that are not a mirror's (those are
/// `MirrorHealth`'s): main refusing or not answering connects, clients
/// whose PROXY protocol header is refused, dumps that could not be written
/// or were dropped. Each is counted in the metrics; this puts it in the
/// log too, as `MirrorHealth` does for mirrors: one line per cause and
/// target per interval for the whole process, saying how many since the
/// last line and the details of the latest (the address and errno, the
/// peer and the reason, the path).
///
/// Sessions and the dump writer record (one lock, on failure paths only,
/// no allocation for the sessions' causes); each worker's tick logs.
public final class ProblemLog: Sendable {
    /// What went wrong; one rate limit each.
    public enum Cause: Int, CaseIterable, Sendable {
        case mainConnectFailure, mainConnectTimeout, proxyHeaderRefused, dumpWriteFailure, dumpDropped, recordWriteFailure, recordDropped
    }

    /// Why a client's PROXY protocol header was refused.
    public enum HeaderRefusal: Sendable, Equatable {
        case invalid(ProxyProtocol.Failure)
        /// No whole header within `--proxy-header-timeout`.
        case timedOut
        /// The client closed before its header was whole.
        case closedEarly

        var reason: String {
            switch self {
            case .invalid(let failure): failure.reason
            case .timedOut: "no whole header within --proxy-header-timeout"
            case .closedEarly: "the client closed before its header was whole"
            }
        }
    }

    private struct Entry {
        var count: UInt64 = 0
        var logged: UInt64 = 0
        var errno: Int32 = 0
        var peer: ProxyAddress?
        var refusal: HeaderRefusal?
        var path = ""
        var limiter: RateLimitedLog
    }

    private struct Targets {
        var main = "main"
        var mainConnectTimeoutMs = 0
        var dumpDirectory = ""
        var dumpQueueBytes = 0
    }

    private let state: Mutex<[Entry]>
    private let targets = Mutex(Targets())

    public init(intervalMs: UInt64 = 10_000) {
        state = Mutex(Array(repeating: Entry(limiter: RateLimitedLog(intervalMs: intervalMs)), count: Cause.allCases.count))
    }

    /// The names the lines use: main's address as given, its connect
    /// timeout, the dump directory and its queue's bound.
    public func name(main: String, mainConnectTimeoutMs: Int, dumpDirectory: String? = nil, dumpQueueBytes: Int = 0) {
        targets.withLock {
            $0.main = main
            $0.mainConnectTimeoutMs = mainConnectTimeoutMs
            $0.dumpDirectory = dumpDirectory ?? ""
            $0.dumpQueueBytes = dumpQueueBytes
        }
    }

    // MARK: Recording

    func mainConnectFailed(errno: Int32) {
        state.withLock {
            $0[Cause.mainConnectFailure.rawValue].count &+= 1
            $0[Cause.mainConnectFailure.rawValue].errno = errno
        }
    }

    func mainConnectTimedOut() {
        state.withLock { $0[Cause.mainConnectTimeout.rawValue].count &+= 1 }
    }

    func proxyHeaderRefused(_ refusal: HeaderRefusal, peer: ProxyAddress?) {
        state.withLock {
            $0[Cause.proxyHeaderRefused.rawValue].count &+= 1
            $0[Cause.proxyHeaderRefused.rawValue].refusal = refusal
            $0[Cause.proxyHeaderRefused.rawValue].peer = peer
        }
    }

    /// A dump or a recording not written (`.dumpWriteFailure`,
    /// `.recordWriteFailure`), on its writer's thread; the recorder calls
    /// once per run of failures (a full disk).
    func writeFailed(_ cause: Cause, path: String, errno: Int32) {
        state.withLock {
            $0[cause.rawValue].count &+= 1
            $0[cause.rawValue].errno = errno
            $0[cause.rawValue].path = path
        }
    }

    /// A dump or a recording dropped because its writer's queue was full
    /// (`.dumpDropped`, `.recordDropped`).
    func dropped(_ cause: Cause) {
        state.withLock { $0[cause.rawValue].count &+= 1 }
    }

    /// Recorded so far (tests).
    public func count(_ cause: Cause) -> UInt64 { state.withLock { $0[cause.rawValue].count } }

    // MARK: Logging

    /// The lines due at `nowMs` (each cause with news whose interval has
    /// passed); `log` writes them.
    public func lines(nowMs: UInt64) -> [String] {
        let names = targets.withLock { $0 }
        var lines: [String] = []
        state.withLock { entries in
            for cause in Cause.allCases {
                let new = entries[cause.rawValue].count &- entries[cause.rawValue].logged
                guard new > 0, entries[cause.rawValue].limiter.allow(nowMs: nowMs) else { continue }
                entries[cause.rawValue].logged = entries[cause.rawValue].count
                lines.append(Self.line(cause, new, entries[cause.rawValue], names))
            }
        }
        return lines
    }

    func log(nowMs: UInt64, logger: Logger) {
        // Outside the lock: a slow stderr must not hold the other workers.
        for line in lines(nowMs: nowMs) { logger.warning("\(line)") }
    }

    private static func line(_ cause: Cause, _ count: UInt64, _ entry: Entry, _ names: Targets) -> String {
        switch cause {
        case .mainConnectFailure:
            return "main \(names.main): \(Counted.text(count, "connect failure")) (last: \(SystemCallError.describe(errorNumber: entry.errno))); "
                + "\(count == 1 ? "its client was" : "their clients were") closed"
        case .mainConnectTimeout:
            return "main \(names.main): \(Counted.text(count, "connect timeout")) (no answer within --main-connect-timeout "
                + "\(DurationParser.text(milliseconds: names.mainConnectTimeoutMs))); "
                + "\(count == 1 ? "its client was" : "their clients were") closed"
        case .proxyHeaderRefused:
            let peer = entry.peer.map { "from \($0)" } ?? "from a client whose address the kernel did not give"
            return "refused \(Counted.text(count, "client")) without a valid PROXY protocol header "
                + "(last \(peer): \(entry.refusal?.reason ?? "?"))"
        case .dumpWriteFailure:
            return "--dump-dir \(names.dumpDirectory): \(Counted.text(count, "dump")) not written "
                + "(last: \(entry.path): \(SystemCallError.describe(errorNumber: entry.errno)))"
        case .dumpDropped:
            return "--dump-dir \(names.dumpDirectory): \(Counted.text(count, "dump")) dropped: the writer's queue "
                + "(--dump-queue \(SizeParser.text(names.dumpQueueBytes))) was full; the disk is slower than the sessions that differ"
        case .recordWriteFailure:
            return "--record-dir: a recording not written (\(entry.path): \(RingError.describe(errno: entry.errno))); "
                + "the proxy keeps serving, later failures are counted (duplicator_recordings_total{result=\"failed\"})"
        case .recordDropped:
            return "--record-dir: \(Counted.text(count, "recording")) dropped: the writer's queue was full; the disk is slower than the sessions"
        }
    }
}

/// "1 connect failure", "3 connect failures": a count and its noun in the right number.
public enum Counted {
    public static func text(_ count: some BinaryInteger, _ singular: String, _ plural: String? = nil) -> String {
        "\(count) \(count == 1 ? singular : plural ?? singular + "s")"
    }
}
