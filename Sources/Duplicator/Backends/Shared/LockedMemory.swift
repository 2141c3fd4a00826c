import Glibc

/// Registered buffers are locked memory: the kernel charges them to
/// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK. The pools grow with
/// the load, so a limit below their bound would only show under load, when a
/// pool stops growing; the proxy checks it at start instead.
enum LockedMemory {
    /// Bytes one worker may lock: its rings and its pool at full size.
    static func perWorkerBytes(_ config: Config) -> Int {
        let ringBytes = config.ringEntries * 64 + config.completionEntries * 16
        return ringBytes + config.poolSlotsPerWorker * config.slotSize
    }

    /// The limit, or nil when nothing limits this process (unlimited, or CAP_IPC_LOCK).
    static func limitBytes() -> Int? {
        hasIPCLockCapability() ? nil : rlimitBytes()
    }

    /// RLIMIT_MEMLOCK's soft limit, or nil when it is unlimited.
    static func rlimitBytes() -> Int? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(8) /* RLIMIT_MEMLOCK */, &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(clamping: limit.rlim_cur)
    }

    /// The one-line refusal when `config` needs more locked memory than the limit allows.
    static func check(_ config: Config, limitBytes: Int?) -> ProxyError? {
        guard let limitBytes else { return nil }
        let needed = perWorkerBytes(config) * config.threads
        guard needed > limitBytes else { return nil }
        return ProxyError("not enough locked memory: \(config.threads == 1 ? "1 worker needs" : "\(config.threads) workers need") up to \(needed) bytes "
            + "(rings and buffer pools of \(config.poolSlotsPerWorker * config.slotSize) bytes each, --max-memory), "
            + "RLIMIT_MEMLOCK is \(limitBytes) bytes; raise it (ulimit -l, LimitMEMLOCK= in systemd) or lower --max-memory")
    }

    /// CAP_IPC_LOCK (bit 14) in the effective set, from /proc/self/status.
    private static func hasIPCLockCapability() -> Bool {
        guard let file = fopen("/proc/self/status", "r") else { return false }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasPrefix("CapEff:") else { continue }
            let hex = text.dropFirst("CapEff:".count).filter { $0.isHexDigit }
            return (UInt64(hex, radix: 16) ?? 0) & (1 << 14) != 0
        }
        return false
    }
}
