import Glibc
import Logging
import Platform
import Synchronization

// SIGHUP: a new configuration for new sessions, atomically.
//
// The shape: each configuration the proxy runs is one immutable
// `ConfigGeneration`, published to the workers through `ConfigGenerations`
// (a lock for the value and an atomic number). A worker compares the number
// with the one it adopted once per round of completions (one relaxed atomic
// load: nothing per event) and, when it changed, takes the new generation's
// session limits; a session copies the limits current at its start and keeps
// them to its end. So a session starts with the old configuration or the
// new one, never a mix, and a live session is never touched: a mirror never
// joins one (it would get a stream with a hole), and a removed mirror's live
// copies go on until their session ends, then flush and close as at every
// session end (counted as that mirror's, under its own name).
//
// Mirrors are kept in slots, fixed per worker at start (`--mirror-slots`):
// the sessions' legs, the per-mirror counters, the mirrors' health and the
// workers' target addresses are indexed by slot, and a slot belongs to one
// mirror address for the life of the process. So health and metrics follow a
// mirror by its address across reloads (removed and added back, it finds its
// slot, its counters and its back-off again), an old session's leg never
// changes address under it, and nothing indexed by position has to move.
// A generation says which slots it uses (`SessionLimits.mirrorSlotsAbsent`
// for the others). A new address needs a slot never used before; when all
// are taken, the reload is refused (a handover starts afresh).

/// One configuration as new sessions take it: immutable, shared by the workers.
public final class ConfigGeneration: Sendable {
    /// 1 at start, one more per reload that applied.
    public let number: Int
    public let config: Config
    /// Of the configuration's settings (`ConfigGeneration.digest(of:)`): which one runs.
    public let digest: String
    /// Per mirror of `config.mirrors`, in order: its slot.
    public let mirrorSlots: [Int]
    /// Per slot: the name of the mirror that holds it ("" while free), and its address.
    let slotNames: [String]
    let slotAddresses: [SocketAddress?]
    /// What a session that starts with this generation follows.
    let limits: SessionLimits

    init(number: Int, config: Config, mirrorSlots: [Int], slotNames: [String], slotAddresses: [SocketAddress?]) {
        self.number = number
        self.config = config
        self.mirrorSlots = mirrorSlots
        self.slotNames = slotNames
        self.slotAddresses = slotAddresses
        var limits = config.limits
        let used = (mirrorSlots.max() ?? -1) + 1
        limits.mirrorCount = used
        var thresholds = [UInt64](repeating: MirrorSampling.everySession, count: used)
        var absent: UInt64 = used == 0 ? 0 : (used == 64 ? ~0 : (1 << UInt64(used)) - 1)
        for (index, slot) in mirrorSlots.enumerated() {
            absent &= ~(1 << UInt64(slot))
            if index < config.mirrorSamplePercents.count {
                thresholds[slot] = MirrorSampling.threshold(percent: config.mirrorSamplePercents[index])
            }
        }
        limits.mirrorSampleThresholds = thresholds.allSatisfy({ $0 == MirrorSampling.everySession }) ? [] : thresholds
        limits.mirrorSlotsAbsent = absent
        self.limits = limits
        digest = Self.digest(of: config)
    }

    /// What runs, as text whose FNV-1a digest names the configuration.
    public static func digest(of config: Config) -> String {
        let mirrors = zip(config.mirrors.map(\.text), config.mirrorSamplePercents.isEmpty
                          ? Array(repeating: 100, count: config.mirrors.count) : config.mirrorSamplePercents)
            .map { "\($0.0)@\($0.1)%" }
        let text = "listen=\(config.listen.text) main=\(config.main.text) mirrors=\(mirrors) "
            + "timeouts=\(config.mirrorConnectTimeoutMs),\(config.mainConnectTimeoutMs),\(config.idleTimeoutMs),"
            + "\(config.mirrorLingerMs),\(config.proxyHeaderTimeoutMs),\(config.mirrorTurnTimeoutUs) "
            + "backlog=\(config.backlogBytesMax) batch=\(config.mirrorBatchBytes),\(config.mirrorBatchDelayUs) "
            + "turns=\(config.mirrorTurns) discard=\(config.mirrorDiscardBatchBytes) compare=\(config.compare)"
        return ConfigFile.digest(of: text)
    }
}

/// Where workers find the current generation: the value under a lock, its
/// number in an atomic that a worker reads once per round.
public final class ConfigGenerations: Sendable {
    private let current = Mutex<ConfigGeneration?>(nil)
    let number = Atomic<Int>(0)

    public init() {}

    func publish(_ generation: ConfigGeneration) {
        current.withLock { $0 = generation }
        number.store(generation.number, ordering: .releasing)
    }

    public var latest: ConfigGeneration? { current.withLock { $0 } }
}

/// A worker's side of the generations: which one it adopted, and what of
/// its own loop follows it. A class so that the backends' `WorkerParts`
/// (a struct held in a `let`) can change it.
final class GenerationFollower {
    private var adopted = 0
    /// The clock in microseconds is read each round: sessions may have
    /// mirror timers, or record arrival times (`--dump-dir`).
    private var _readsMicroseconds: Bool
    var readsMicroseconds: Bool { _readsMicroseconds }

    init(readsMicroseconds: Bool) { _readsMicroseconds = readsMicroseconds }

    /// Once per round: nil, or the generation to adopt now.
    @inline(__always)
    func changed(_ generations: ConfigGenerations) -> ConfigGeneration? {
        guard generations.number.load(ordering: .acquiring) != adopted else { return nil }
        return generations.latest
    }

    func adopted(_ generation: ConfigGeneration, readsMicroseconds: Bool) {
        adopted = generation.number
        _readsMicroseconds = _readsMicroseconds || readsMicroseconds
    }
}

/// What changed between two configurations: what a reload applies to new
/// sessions, and what it cannot apply in place (then it applies nothing).
public struct ConfigDiff: Equatable, Sendable {
    /// The settings that differ and apply to new sessions, by flag name.
    public var applied: [String] = []
    /// The settings that differ and need a new process (a handover), by flag name, with why.
    public var refused: [String] = []

    public init(from old: Config, to new: Config) {
        func check<Value: Equatable>(_ name: String, _ value: (Config) -> Value, live: Bool = true, why: String = "") {
            guard value(old) != value(new) else { return }
            if live { applied.append(name) } else { refused.append(why.isEmpty ? name : "\(name) (\(why))") }
        }
        // Bound at start: the listeners, the threads, the memory and what was sized from it.
        check("listen", { $0.listen.text }, live: false)
        check("forward", { $0.main.text }, live: false)
        check("threads", \.threads, live: false)
        check("max-memory", \.maxMemoryBytes, live: false)
        check("slot-size", \.slotSize, live: false)
        check("max-sessions", \.sessionsMax, live: false)
        check("backlog-chunks", \.backlogChunksMax, live: false, why: "sized at start")
        check("backend", \.backend.rawValue, live: false)
        check("ring-mode", \.ringMode.rawValue, live: false)
        check("zerocopy", \.zeroCopy.rawValue, live: false)
        check("wait-batch", \.waitBatch, live: false)
        check("accept-gathering", \.acceptGathering, live: false)
        check("wait-batch-timeout", \.waitBatchTimeoutUs, live: false)
        check("drain-timeout", \.drainTimeoutMs, live: false)
        check("mirror-slots", { $0.mirrorSlots ?? 0 }, live: false, why: "sized at start")
        check("send-proxy", { $0.sendProxy?.rawValue }, live: false)
        check("accept-proxy", \.acceptProxy, live: false)
        check("compare-window", \.compareWindowBytes, live: false, why: "reserved at start")
        check("record-dir", { $0.recording?.directory }, live: false, why: "its writer starts with the process")
        check("record-sample", { $0.recording?.samplePercent }, live: false, why: "its writer starts with the process")
        check("record-bytes", { $0.recording?.bytesPerDirection }, live: false, why: "reserved at start")
        check("record-max-bytes", { $0.recording?.directoryBytesMax }, live: false, why: "its writer starts with the process")
        // What a session takes at its start.
        check("mirror", { $0.mirrors.map(\.text) })
        check("mirror sampling", \.mirrorSamplePercents)
        check("timeout", \.mirrorConnectTimeoutMs)
        check("main-connect-timeout", \.mainConnectTimeoutMs)
        check("idle-timeout", \.idleTimeoutMs)
        check("mirror-linger", \.mirrorLingerMs)
        check("proxy-header-timeout", \.proxyHeaderTimeoutMs)
        check("backlog", \.backlogBytesMax)
        check("mirror-discard-batch", \.mirrorDiscardBatchBytes)
        check("mirror-batch-bytes", \.mirrorBatchBytes)
        check("mirror-batch-delay", \.mirrorBatchDelayUs)
        check("mirror-turn-timeout", \.mirrorTurnTimeoutUs)
        check("mirror-turns", \.mirrorTurns)
        // Within the windows reserved at start (ConfigReloads refuses it without).
        check("compare", \.compare)
        // Where a process started with --dump-dir writes (ConfigReloads
        // refuses it without), and what new sessions record.
        check("dump-dir", \.dumpDirectory)
        check("dump-bytes", \.dumpBytes)
        // The dump writer's bounds, for the dumps submitted from then on.
        check("dump-max-files", \.dumpMaxFiles)
        check("dump-queue", \.dumpQueueBytes)
        // TLS: on or off is the listener's protocol; the certificate and key
        // (read again at each reload: a renewal keeps their paths), the
        // ALPN list and the timeout apply to new clients' handshakes.
        check("tls-cert", { $0.tls != nil }, live: false, why: "TLS on or off changes what clients speak")
        check("tls-cert", { $0.tls.map { [$0.certificatePath, $0.keyPath, $0.filesDigest] } })
        check("tls-alpn", { $0.tls?.alpn })
        check("tls-handshake-timeout", { $0.tls?.handshakeTimeoutMs })
        check("forward-tls", { $0.forwardTLS != nil }, live: false, why: "TLS on or off changes what main speaks")
        check("forward-ca", { $0.forwardTLS.map { [$0.caPath ?? "", $0.serverName ?? "", $0.filesDigest] } })
        check("mirror-tls", { $0.mirrorTLS != nil }, live: false, why: "TLS on or off changes what the mirrors speak")
        check("mirror-ca", { $0.mirrorTLS.map { [$0.caPath ?? "", $0.filesDigest] } })
    }

    public var isEmpty: Bool { applied.isEmpty && refused.isEmpty }
}

/// The slots of the mirror addresses, for the life of the process.
struct MirrorSlots {
    /// Per slot: the address key (`SocketAddress.description`), name and address of its mirror.
    private(set) var keys: [String?]
    private(set) var names: [String]
    private(set) var addresses: [SocketAddress?]

    init(count: Int) {
        keys = Array(repeating: nil, count: count)
        names = Array(repeating: "", count: count)
        addresses = Array(repeating: nil, count: count)
    }

    /// The slot of each mirror: the one its address had, or the first never
    /// used; nil and the address that found none when all are taken.
    mutating func assign(_ mirrors: [(name: String, address: SocketAddress)]) -> Result<[Int], SlotsTaken> {
        var trial = self
        var slots: [Int] = []
        for mirror in mirrors {
            let key = mirror.address.description
            if let slot = trial.keys.firstIndex(of: key), !slots.contains(slot) {
                slots.append(slot)
                continue
            }
            guard let free = trial.keys.firstIndex(of: nil) else {
                return .failure(SlotsTaken(name: mirror.name, count: keys.count))
            }
            trial.keys[free] = key
            trial.names[free] = mirror.name
            trial.addresses[free] = mirror.address
            slots.append(free)
        }
        self = trial
        return .success(slots)
    }

    struct SlotsTaken: Error {
        let name: String
        let count: Int
    }
}

/// The proxy's reload state: the generations, the slots, what a new
/// configuration is checked against, and the counts the metrics show.
final class ConfigReloads: Sendable {
    let generations: ConfigGenerations
    private let slots: Mutex<MirrorSlots>
    private let listen: Endpoint
    private let listenAddress: SocketAddress
    private let metrics: StartupChecks.Resolved?
    /// Sessions have room for this many turns per mirror (sized at start).
    private let mirrorTurnsMax: Int
    /// Sessions have compare windows (the start had `--compare`): a reload may switch it.
    private let compareReserved: Bool
    /// The start had `--dump-dir`: its writer runs, and sessions may record.
    private let dumpsReserved: Bool
    let succeeded = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)
    /// Seconds since the epoch of the latest reload that applied (or of the start).
    let lastSuccessSeconds = Atomic<UInt64>(0)

    /// Publishes generation 1, `config`, whose mirrors take slots 0, 1, ...
    init(config: Config, listenAddress: SocketAddress, mirrors: [SocketAddress], metrics: StartupChecks.Resolved?,
         generations: ConfigGenerations) {
        self.generations = generations
        listen = config.listen
        self.listenAddress = listenAddress
        self.metrics = metrics
        mirrorTurnsMax = config.mirrorTurns
        compareReserved = config.slotLimits.compareWindowBytes > 0
        dumpsReserved = config.slotLimits.dumpBytes > 0
        var table = MirrorSlots(count: config.mirrorSlotCount)
        // Distinct addresses were checked at start; a duplicate still gets a slot of its own.
        var assigned: [Int] = []
        for (index, address) in mirrors.enumerated() {
            if case .success(let slots) = table.assign([(config.mirrors[index].text, address)]) {
                assigned.append(slots[0])
            }
        }
        if assigned.count != mirrors.count { assigned = Array(0..<mirrors.count) }
        slots = Mutex(table)
        lastSuccessSeconds.store(UInt64(time(nil)), ordering: .relaxed)
        generations.publish(ConfigGeneration(number: 1, config: config, mirrorSlots: assigned, slotNames: table.names,
                                             slotAddresses: table.addresses))
    }

    /// The target addresses a worker starts with: main's, then each slot's
    /// (main's again for a slot not yet taken; never connected to).
    static func workerTargets(main: SocketAddress, mirrors: [SocketAddress], slots: Int) -> [SocketAddress] {
        [main] + mirrors + Array(repeating: main, count: max(0, slots - mirrors.count))
    }

    var current: ConfigGeneration { generations.latest! }

    /// Applies `config` to new sessions, or throws one line saying why not
    /// (and then nothing changed). Returns the generation now current.
    /// `beforePublish` sees a new generation before any session can start
    /// with it (what names its mirror slots must know them first).
    func reload(to config: Config, beforePublish: (ConfigGeneration) -> Void = { _ in }) throws(ConfigError) -> (ConfigGeneration, ConfigDiff) {
        do {
            let result = try apply(config, beforePublish: beforePublish)
            succeeded.add(1, ordering: .relaxed)
            lastSuccessSeconds.store(UInt64(time(nil)), ordering: .relaxed)
            return result
        } catch {
            failed.add(1, ordering: .relaxed)
            throw error
        }
    }

    private func apply(_ config: Config, beforePublish: (ConfigGeneration) -> Void) throws(ConfigError) -> (ConfigGeneration, ConfigDiff) {
        try config.validate()
        let running = current
        let diff = ConfigDiff(from: running.config, to: config)
        guard diff.refused.isEmpty else {
            throw ConfigError("cannot change \(diff.refused.joined(separator: ", ")) in place: that needs a new process "
                + "(a restart, or a handover with --handover-socket)")
        }
        guard diff.isEmpty == false else { return (running, diff) }
        if config.compare && !compareReserved {
            throw ConfigError("key 'compare': its windows are reserved per session at start, and this process started without it: "
                + "that needs a new process (one started with --compare may switch it off and on by reload)")
        }
        if let directory = config.dumpDirectory, directory != running.config.dumpDirectory {
            guard dumpsReserved else {
                throw ConfigError("key 'dump-dir': the dump writer starts with the process, and this one started without --dump-dir: "
                    + "that needs a new process (one started with --dump-dir may change it, or switch it off and on, by reload)")
            }
            do {
                try BackgroundWriter<DumpRequest>.checkDirectory(directory, flag: "--dump-dir")
            } catch {
                throw ConfigError("key 'dump-dir': \(error.message)")
            }
        }
        if config.mirrorTurns > mirrorTurnsMax {
            throw ConfigError("key 'mirror-turns': \(config.mirrorTurns) is more than the \(mirrorTurnsMax) the sessions were sized for at start: that needs a new process")
        }
        // The checks of the start, against the new mirrors: a loop (a mirror
        // that is the listen address, main, or the metrics server) is refused.
        let main = StartupChecks.Resolved(endpoint: config.main, addresses: try config.main.resolveAll(role: .connect))
        var resolved: [StartupChecks.Resolved] = []
        for mirror in config.mirrors {
            resolved.append(StartupChecks.Resolved(endpoint: mirror, addresses: try mirror.resolveAll(role: .connect)))
        }
        try StartupChecks(listen: listen, listenAddress: listenAddress, main: main, mirrors: resolved, metrics: metrics,
                          localAddresses: localHostAddresses()).check()
        let generation = try slots.withLock { table throws(ConfigError) -> ConfigGeneration in
            switch table.assign(zip(config.mirrors, resolved).map { ($0.0.text, $0.1.addresses[0]) }) {
            case .success(let assigned):
                return ConfigGeneration(number: running.number + 1, config: config, mirrorSlots: assigned,
                                        slotNames: table.names, slotAddresses: table.addresses)
            case .failure(let taken):
                throw ConfigError("key 'mirror': no slot left for \(taken.name): all \(taken.count) mirror slots "
                    + "(--mirror-slots) have held other addresses since start; that needs a new process")
            }
        }
        beforePublish(generation)
        generations.publish(generation)
        return (generation, diff)
    }

    /// The reload families of the metrics page.
    func metricsText() -> String {
        let generation = current
        return Self.metricsText(ok: succeeded.load(ordering: .relaxed), failed: failed.load(ordering: .relaxed),
                                lastSuccessSeconds: lastSuccessSeconds.load(ordering: .relaxed),
                                generation: generation.number, digest: generation.digest)
    }

    /// The same families from plain values (`PrometheusText.families()` lists them from a render of these).
    static func metricsText(ok: UInt64, failed: UInt64, lastSuccessSeconds: UInt64, generation: Int, digest: String) -> String {
        PrometheusText.family("duplicator_config_reloads_total", "counter",
                              "Configuration reloads (SIGHUP), by result: ok applied to new sessions, failed changed nothing.",
                              [("result=\"ok\"", ok), ("result=\"failed\"", failed)])
            + PrometheusText.family("duplicator_config_last_reload_success_timestamp_seconds", "gauge",
                                    "When the running configuration was applied (the start, or the latest reload that applied), in seconds since the epoch.",
                                    [("", lastSuccessSeconds)])
            + PrometheusText.family("duplicator_config_info", "gauge",
                                    "The running configuration: its generation (1 at start, one more per applied reload) and digest.",
                                    [("generation=\"\(generation)\",digest=\"\(digest)\"", 1)])
    }
}

extension Proxy {
    /// SIGHUP: applies `config` to the sessions that start from now on, or
    /// throws one line saying why not (then nothing changed). Returns a
    /// one-line summary of what changed.
    public func reload(to config: Config) throws(ConfigError) -> String {
        // A slot the reload fills is named in the dumps before a session can use it.
        let (generation, diff) = try reloads.reload(to: config) { generation in
            dumpWriter?.follow(slotNames: generation.slotNames, slotAddresses: generation.slotAddresses.map { $0?.serverAddress })
            if let directory = generation.config.dumpDirectory { dumpWriter?.follow(directory: directory) }
        }
        guard !diff.isEmpty else { return "nothing changed (configuration \(generation.digest))" }
        // What the start set up from the configuration follows it: the
        // run-time loop guard knows the new mirrors' addresses, and the
        // problem log names the timeout new sessions run with.
        loopGuard.learn(generation.slotAddresses.compactMap { $0 })
        let new = generation.config
        control.problems.name(main: new.main.text, mainConnectTimeoutMs: new.mainConnectTimeoutMs,
                              dumpDirectory: new.dumpDirectory, dumpQueueBytes: new.dumpQueueBytes)
        dumpWriter?.follow(maxFiles: new.dumpMaxFiles, queueBytesMax: new.dumpQueueBytes)
        let mirrors = zip(generation.config.mirrors, generation.mirrorSlots).map { "\($0.0)" }
        return "configuration \(generation.number) (\(generation.digest)) applies to new sessions: "
            + "changed \(diff.applied.joined(separator: ", ")); mirrors now [\(mirrors.joined(separator: ", "))]"
    }

    /// The configuration new sessions start with.
    public var currentGeneration: ConfigGeneration { reloads.current }

    /// `duplicator_config_*`, for the metrics page.
    public func reloadMetricsText() -> String { reloads.metricsText() }

    /// A reload that failed before it reached the proxy (the file could not be read or parsed).
    public func reloadFailed() { reloads.failed.add(1, ordering: .relaxed) }
}

extension Config {
    /// What each worker's sessions are sized for: every mirror slot.
    var slotLimits: SessionLimits {
        var limits = self.limits
        let slots = mirrorSlotCount
        limits.mirrorCount = slots
        if !limits.mirrorSampleThresholds.isEmpty {
            limits.mirrorSampleThresholds += Array(repeating: MirrorSampling.everySession,
                                                   count: slots - limits.mirrorSampleThresholds.count)
        }
        limits.compareWindowBytes = compare && slots > 0 ? compareWindowBytes : 0
        limits.dumpBytes = limits.compareWindowBytes > 0 && dumpDirectory != nil ? dumpBytes : 0
        return limits
    }
}
