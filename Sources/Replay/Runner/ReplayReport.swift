import Duplicator
import Platform

/// What `duplicator replay` prints: a progress line while it runs, then a
/// summary (text), or the summary as one JSON object (`--json`).
public struct ReplayReport: Sendable {
    public var counts: ReplayCounts
    public var skipped: Int
    public var durationSeconds: Double
    public var cpuSeconds: Double
    public var p50Micros: Double
    public var p90Micros: Double
    public var p99Micros: Double
    public var p999Micros: Double
    public var latencySamples: UInt64
    public var compared: Bool
    public var backend: String

    public init(counts: ReplayCounts, skipped: Int, durationSeconds: Double, cpuSeconds: Double, p50Micros: Double,
                p90Micros: Double, p99Micros: Double, p999Micros: Double, latencySamples: UInt64, compared: Bool, backend: String) {
        self.counts = counts
        self.skipped = skipped
        self.durationSeconds = durationSeconds
        self.cpuSeconds = cpuSeconds
        self.p50Micros = p50Micros
        self.p90Micros = p90Micros
        self.p99Micros = p99Micros
        self.p999Micros = p999Micros
        self.latencySamples = latencySamples
        self.compared = compared
        self.backend = backend
    }

    public var requestsPerSecond: Double { durationSeconds > 0 ? Double(counts.requests) / durationSeconds : 0 }
    public var cpuMicrosPerRequest: Double { counts.requests > 0 ? cpuSeconds * 1e6 / Double(counts.requests) : 0 }

    static func fixedText(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        var text = "\(rounded)"
        if text.hasSuffix(".0") && digits == 0 { text.removeLast(2) }
        return text
    }

    public static func progressLine<IO>(_ engine: ReplayEngine<IO>, elapsedSeconds: Double) -> String {
        let counts = engine.counts
        var line = "replay: \(counts.sessionsDone)/\(counts.sessions) sessions, "
            + "\(Self.fixedText(elapsedSeconds > 0 ? Double(counts.requests) / elapsedSeconds : 0, 0)) req/s"
        if engine.options.compare {
            line += ", " + ReplyComparison.Verdict.allCases.map { "\(counts.count($0)) \($0.label)" }.joined(separator: ", ")
        }
        return line
    }

    public var summary: String {
        var lines: [String] = []
        lines.append("sessions: \(counts.sessions) replayed (\(skipped) skipped), \(counts.requests) requests in "
            + "\(Self.fixedText(durationSeconds, 3)) s: \(Self.fixedText(requestsPerSecond, 0)) requests/s (\(backend))")
        lines.append("bytes: \(counts.bytesSent) sent, \(counts.bytesReceived) received")
        lines.append("latency per turn (\(latencySamples) turns): p50 \(Self.fixedText(p50Micros, 0)) us, p90 \(Self.fixedText(p90Micros, 0)) us, "
            + "p99 \(Self.fixedText(p99Micros, 0)) us, p99.9 \(Self.fixedText(p999Micros, 0)) us")
        lines.append("replayer CPU: \(Self.fixedText(cpuMicrosPerRequest, 2)) us per request")
        if compared {
            lines.append("verdicts: " + ReplyComparison.Verdict.allCases.map { "\(counts.count($0)) \($0.label)" }.joined(separator: ", "))
        }
        if counts.connectFailed > 0 {
            lines.append("connect failed: \(counts.connectFailed) sessions (\(errorDescription(counts.firstConnectErrno)))")
        }
        if counts.resets > 0 { lines.append("reset by the target: \(counts.resets) sessions") }
        if counts.turnsTimedOut > 0 { lines.append("turns sent after the turn timeout: \(counts.turnsTimedOut)") }
        if counts.dumpsSubmitted > 0 { lines.append("dumps: \(counts.dumpsSubmitted) sessions that differ") }
        return lines.joined(separator: "\n")
    }

    /// One JSON object; numbers only, so no escaping is needed but the backend's name (known text).
    public var json: String {
        var fields: [(String, String)] = [
            ("sessions", "\(counts.sessions)"),
            ("match", "\(counts.count(.match))"),
            ("diverged", "\(counts.count(.diverged))"),
            ("shorter", "\(counts.count(.shorter))"),
            ("longer", "\(counts.count(.longer))"),
            ("incomplete", "\(counts.count(.incomplete))"),
            ("skipped", "\(skipped)"),
            ("compared", compared ? "true" : "false"),
            ("requests", "\(counts.requests)"),
            ("requests_per_s", Self.fixedText(requestsPerSecond, 1)),
            ("duration_s", Self.fixedText(durationSeconds, 6)),
            ("bytes_sent", "\(counts.bytesSent)"),
            ("bytes_received", "\(counts.bytesReceived)"),
            ("p50_us", Self.fixedText(p50Micros, 1)),
            ("p90_us", Self.fixedText(p90Micros, 1)),
            ("p99_us", Self.fixedText(p99Micros, 1)),
            ("p999_us", Self.fixedText(p999Micros, 1)),
            ("connect_failed", "\(counts.connectFailed)"),
            ("resets", "\(counts.resets)"),
            ("turns_timed_out", "\(counts.turnsTimedOut)"),
            ("cpu_us_per_request", Self.fixedText(cpuMicrosPerRequest, 3)),
        ]
        fields.append(("backend", "\"\(backend)\""))
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
    }
}
