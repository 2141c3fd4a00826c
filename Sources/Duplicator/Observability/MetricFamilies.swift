extension PrometheusText {
    /// Every metric family the proxy can serve, with its type and help, in
    /// the order /metrics gives them: read from a render of a snapshot with
    /// every optional part on (a backend, a mirror, `--dump-dir`) and the
    /// reload families (`ConfigReloads`), so that
    /// the man page's METRICS section is the code's list, not a copy of it.
    public static func families() -> [(name: String, type: String, help: String)] {
        var snapshot = StatsSnapshot(workers: [WorkerStats(mirrorCount: 1)], mirrorNames: ["mirror"], poolSlotsPerWorker: 1)
        snapshot.backend = "io_uring"
        snapshot.acceptGathered = 1
        snapshot.dumping = true
        snapshot.recordings = RecordWriter.Result.allCases.map { _ in 0 }
        var help: [String: String] = [:]
        var result: [(name: String, type: String, help: String)] = []
        let text = render(snapshot) + ConfigReloads.metricsText(ok: 0, failed: 0, lastSuccessSeconds: 0, generation: 1, digest: "")
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
            guard words.count >= 4, words[0] == "#" else { continue }
            let name = String(words[2])
            if words[1] == "HELP" { help[name] = String(words[3]) }
            if words[1] == "TYPE" { result.append((name, String(words[3]), help[name] ?? "")) }
        }
        return result
    }
}
