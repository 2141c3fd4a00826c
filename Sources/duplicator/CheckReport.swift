import Duplicator

/// What `--check` prints and the start-up logs: one fact per line, each
/// led by what it is about, in readable units, so that an operator can
/// read (or grep) one thing without parsing a sentence.
enum CheckReport {
    static func lines(_ config: Config, proxy: Proxy, metrics: String?) -> [String] {
        var lines = [
            "listen: \(proxy.listenAddress)",
            "main: \(config.main)",
            "mirrors: \(mirrors(config))",
            // "io_uring (defer)", "epoll (--backend epoll)", or epoll and why io_uring cannot run.
            "backend: \(ProxyOptions.backendNote(proxy).replacingPrefix("with ", by: ""))",
            "workers: \(config.threads)",
            "memory per worker: a buffer pool of up to \(ReadableBytes.text(config.poolSlotsPerWorker * config.slotSize)) "
                + "(\(config.poolSlotsPerWorker) slots of \(ReadableBytes.text(config.slotSize)))"
                + (config.mirrors.isEmpty ? "" : ", of which mirrors may hold half"),
            "sessions per worker: \(config.sessionsPerWorker) at once (--max-sessions \(config.sessionsMax), "
                + "--max-memory \(ReadableBytes.text(config.maxMemoryBytes)) for \(config.threads) "
                + "\(config.threads == 1 ? "worker" : "workers")); more clients are refused",
            "limits: " + limits(config),
        ]
        if let metrics { lines.append("metrics: http://\(metrics)/metrics") }
        lines += features(config, proxy: proxy)
        return lines
    }

    /// "none", "1: :8082", "3: :10 on 10% of sessions, :11 on 2.5% of sessions, :12".
    static func mirrors(_ config: Config) -> String {
        guard !config.mirrors.isEmpty else { return "none" }
        let names = config.mirrors.enumerated().map { index, mirror -> String in
            let percent = index < config.mirrorSamplePercents.count ? config.mirrorSamplePercents[index] : 100
            guard percent < 100 else { return mirror.text }
            return "\(mirror) on \(percent == percent.rounded() ? "\(Int(percent))" : "\(percent)")% of sessions"
        }
        return "\(config.mirrors.count): " + names.joined(separator: ", ")
    }

    static func limits(_ config: Config) -> String {
        func duration(_ ms: Int, zero: String) -> String { ms == 0 ? zero : DurationParser.text(milliseconds: ms) }
        var parts = [
            "main connect timeout \(duration(config.mainConnectTimeoutMs, zero: "the kernel's"))",
            "idle timeout \(duration(config.idleTimeoutMs, zero: "none"))",
            "drain timeout \(duration(config.drainTimeoutMs, zero: "none"))",
        ]
        if !config.mirrors.isEmpty {
            parts.insert("mirror connect timeout \(DurationParser.text(milliseconds: config.mirrorConnectTimeoutMs))", at: 0)
            parts += [
                "mirror backlog \(ReadableBytes.text(config.backlogBytesMax)) or \(config.backlogChunksMax) receives",
                "mirror linger \(duration(config.mirrorLingerMs, zero: "none"))",
            ]
        }
        return parts.joined(separator: ", ")
    }

    /// One line per feature that is on.
    static func features(_ config: Config, proxy: Proxy) -> [String] {
        var lines: [String] = []
        if let tls = config.tls { lines.append(tls.summary) }
        if let forward = config.forwardTLS { lines.append(forward.summary("main")) }
        if let mirror = config.mirrorTLS { lines.append(mirror.summary("the mirrors")) }
        if config.acceptProxy {
            lines.append("PROXY protocol: a v1 or v2 header expected from every client within "
                + DurationParser.text(milliseconds: config.proxyHeaderTimeoutMs))
        }
        if let version = config.sendProxy {
            lines.append("PROXY protocol: a \(version.rawValue) header sent to main and every mirror")
        }
        if !config.mirrors.isEmpty {
            lines.append("mirror sends: " + (config.mirrorBatchBytes == 0 ? "not batched"
                : "batched up to \(ReadableBytes.text(config.mirrorBatchBytes)) or "
                    + DurationParser.text(nanoseconds: Int64(config.mirrorBatchDelayUs) * 1_000)))
            if config.mirrorTurns > 0 {
                lines.append("mirror turns: the first \(config.mirrorTurns) kept for mirrors (up to "
                    + DurationParser.text(nanoseconds: Int64(config.mirrorTurnTimeoutUs) * 1_000) + " each)")
            }
        }
        if config.compare {
            lines.append("compare: mirror replies compared with main's in windows of "
                + "\(ReadableBytes.text(config.compareWindowBytes)) per session and mirror, "
                + "up to \(ReadableBytes.text(config.compareMemoryBytesMax)) in all")
        }
        if let directory = config.dumpDirectory {
            lines.append("dumps: pcapng files (mode 0600) of the pairs that differ to \(directory): "
                + "\(ReadableBytes.text(config.dumpBytes)) per direction, at most \(config.dumpMaxFiles) files, "
                + "a queue of \(ReadableBytes.text(config.dumpQueueBytes)), recordings of up to "
                + "\(ReadableBytes.text(config.dumpMemoryBytesMax)) in all")
        }
        lines.append("zero-copy: \(proxy.zeroCopyNote)")
        return lines
    }
}

private extension String {
    func replacingPrefix(_ prefix: String, by replacement: String) -> String {
        hasPrefix(prefix) ? replacement + dropFirst(prefix.count) : self
    }
}
