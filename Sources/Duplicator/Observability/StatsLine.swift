/// The one compact line `--stats-interval` logs: rates over the interval and
/// each mirror's health, so a glance says whether the mirrors keep up.
public enum StatsLine {
    public static func render(from previous: StatsSnapshot, to current: StatsSnapshot, seconds: Double) -> String {
        let seconds = max(seconds, 0.001)
        func rate(_ now: UInt64, _ before: UInt64) -> String { bytes(Double(now &- before) / seconds) + "/s" }
        var parts = [
            "sessions \(current.sessionsActive) active, +\(current.sessionsAccepted &- previous.sessionsAccepted) new,"
                + " \(current.sessionsEnded &- previous.sessionsEnded) ended"
                + failures(current, previous),
            "client->main \(rate(current.bytesClientToMain, previous.bytesClientToMain)),"
                + " main->client \(rate(current.bytesMainToClient, previous.bytesMainToClient))",
            "pool \(current.poolSlotsInUse)/\(current.poolSlotsGrown) used/grown of \(current.poolSlots)",
        ]
        for (index, mirror) in current.mirrors.enumerated() {
            let before = index < previous.mirrors.count ? previous.mirrors[index] : StatsSnapshot.Mirror(name: mirror.name)
            var text = "mirror \(mirror.name) \(rate(mirror.bytesSent, before.bytesSent))"
            let cut = mirror.sessionsCutForLag &- before.sessionsCutForLag
            let poolShareCut = mirror.sessionsCutForPoolShare &- before.sessionsCutForPoolShare
            let missed = mirror.bytesMissed &- before.bytesMissed
            let connectFailures = (mirror.connectFailures + mirror.connectTimeouts) &- (before.connectFailures + before.connectTimeouts)
            let errors = mirror.errors &- before.errors
            let skipped = mirror.sessionsSkipped &- before.sessionsSkipped
            var problems: [String] = []
            if mirror.workersBackingOff > 0 { problems.append("BACKING OFF") }
            if cut > 0 { problems.append("\(cut) cut for lag") }
            if poolShareCut > 0 { problems.append("\(poolShareCut) cut for the pool share") }
            if missed > 0 { problems.append("\(bytes(Double(missed))) missed") }
            if connectFailures > 0 { problems.append(Counted.text(connectFailures, "connect failure")) }
            if errors > 0 { problems.append(Counted.text(errors, "error")) }
            if skipped > 0 { problems.append(Counted.text(skipped, "session") + " skipped") }
            text += problems.isEmpty ? " ok" : " " + problems.joined(separator: ", ")
            let sampledOut = mirror.sessionsSampledOut &- before.sessionsSampledOut
            if sampledOut > 0 { text += " (\(Counted.text(sampledOut, "session")) sampled out)" }
            text += verdicts(mirror, before)
            parts.append(text)
        }
        return parts.joined(separator: "; ")
    }

    /// `--compare`: the verdicts of the sessions that ended in the interval, e.g. ", compared 98 match, 2 diverged".
    private static func verdicts(_ mirror: StatsSnapshot.Mirror, _ before: StatsSnapshot.Mirror) -> String {
        var counts: [String] = []
        for verdict in ReplyComparison.Verdict.allCases {
            let count = mirror.compared(verdict) &- before.compared(verdict)
            if count > 0 { counts.append("\(count) \(verdict.label)") }
        }
        return counts.isEmpty ? "" : ", compared " + counts.joined(separator: ", ")
    }

    private static func failures(_ current: StatsSnapshot, _ previous: StatsSnapshot) -> String {
        var notes: [String] = []
        let mainFailures = (current.sessionsEndedByMainConnectFailure + current.sessionsEndedByMainError)
            &- (previous.sessionsEndedByMainConnectFailure + previous.sessionsEndedByMainError)
        if mainFailures > 0 { notes.append(Counted.text(mainFailures, "main failure")) }
        let idle = current.sessionsEndedByIdleTimeout &- previous.sessionsEndedByIdleTimeout
        if idle > 0 { notes.append(Counted.text(idle, "idle timeout")) }
        let badProxyHeaders = current.sessionsEndedByBadProxyHeader &- previous.sessionsEndedByBadProxyHeader
        if badProxyHeaders > 0 { notes.append(Counted.text(badProxyHeaders, "bad PROXY protocol header")) }
        let rejected = current.sessionsRejected &- previous.sessionsRejected
        if rejected > 0 { notes.append("\(rejected) rejected") }
        let loops = current.loopsRefused &- previous.loopsRefused
        if loops > 0 { notes.append(Counted.text(loops, "loop") + " refused") }
        return notes.isEmpty ? "" : " (" + notes.joined(separator: ", ") + ")"
    }

    /// 1234567 -> "1.2 MB" (decimal units, as rates are usually read).
    static func bytes(_ value: Double) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var scaled = value
        var unit = 0
        while scaled >= 1000 && unit < units.count - 1 {
            scaled /= 1000
            unit += 1
        }
        if unit == 0 { return "\(Int(scaled.rounded())) B" }
        let tenths = Int((scaled * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[unit])"
    }
}
