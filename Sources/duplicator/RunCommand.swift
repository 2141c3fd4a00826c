import ArgumentParser
import CLinuxSystem
import Duplicator
import Glibc
import Logging
import Platform

/// `duplicator run ...`: the proxy under the name it had when it was a
/// subcommand (scripts and benchmarks call it so); hidden from the help,
/// which shows the same options on `duplicator` itself.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "The proxy (the same as duplicator without a subcommand).",
        discussion: ProxyOptions.discussion,
        shouldDisplay: false
    )

    @OptionGroup var options: ProxyOptions

    func run() throws { try options.runProxy() }
}

/// `duplicator -l :8080 -f :8081 -m :8082 -m :8083`: goduplicator's flags
/// plus our own, and what starts the proxy with them.
struct ProxyOptions: ParsableArguments {
    static let discussion = """
        Every client connection is forwarded to the main server (-f), whose reply goes back to the client, \
        and every client byte is also sent to each mirror (-m), whose replies are read and dropped. \
        A slow, dead or black-holed mirror never slows the client.

        Examples:
          duplicator -l :8080 -f :8081 -m :8082 -m :8083
          duplicator -l 127.0.0.1:6380 -f :6379 -m :6479,:6579 -t 2s
          duplicator -l [::1]:8080 -f [::1]:9000 -m [::1]:9001 --backlog 16MiB
          duplicator --check -l :8080 -f 10.0.0.5:8080 -m 10.0.0.9:8080
          duplicator demo    (a main, a mirror, the proxy and a client on loopback)
          duplicator --config /etc/duplicator.yaml    (kill -HUP reloads it: new sessions take the new mirrors)

        Signals: SIGINT or SIGTERM drains (a second closes every session), SIGUSR1 logs the stats line, \
        SIGHUP reloads the --config file (ignored without one).
        """

    // -l and -f are arrays only so that a second one is an error instead of
    // silently replacing the first; makeConfig() takes exactly one of each.
    @Option(name: [.customShort("l"), .customLong("listen")], help: ArgumentHelp("Address to listen on: host:port, :port (all interfaces) or [ipv6]:port.", valueName: "listen"))
    var listen: [String] = []

    @Option(name: [.customShort("f"), .customLong("forward")], help: ArgumentHelp("The main server: its replies go back to the client. :port means localhost.", valueName: "forward"))
    var forward: [String] = []

    @Option(name: [.customShort("m"), .customLong("mirror")], help: "A mirror server; repeat or separate with commas for several. ADDR@P% mirrors only about P% of the sessions (chosen per session), e.g. :8082@10%.")
    var mirror: [String] = []

    @Option(name: [.customShort("t"), .customLong("timeout")], parsing: .unconditional, help: "Mirror connect timeout, Go-style (500ms, 2s).")
    var timeout: String = DurationParser.text(milliseconds: Defaults.mirrorConnectTimeoutMs)

    @Option(name: .customLong("main-connect-timeout"), parsing: .unconditional, help: "Main connect timeout; 0 for the kernel's.")
    var mainConnectTimeout: String = DurationParser.text(milliseconds: Defaults.mainConnectTimeoutMs)

    @Option(name: .customLong("backlog"), parsing: .unconditional, help: "Bytes a mirror may fall behind before it is cut for the session.")
    var backlog: String = SizeParser.text(Defaults.backlogBytesMax)

    @Option(name: .customLong("backlog-chunks"), parsing: .unconditional, help: "Receives a mirror may fall behind before it is cut (each holds a slot).")
    var backlogChunks: Int = Defaults.backlogChunksMax

    @Option(name: .customLong("slot-size"), parsing: .unconditional, help: "Bytes per buffer slot: the most one receive takes.")
    var slotSize: String = SizeParser.text(Defaults.slotSize)

    @Option(name: .customLong("max-memory"), parsing: .unconditional, help: "Buffer memory of all threads together: the pools grow with the load up to this (registered, locked memory), and each thread admits only the sessions its share can serve at once (64KiB each at the default slot size); more clients are refused.")
    var maxMemory: String = SizeParser.text(Defaults.maxMemoryBytes)

    @Option(name: .customLong("max-sessions"), parsing: .unconditional, help: "Concurrent client sessions per thread at most (--max-memory may admit fewer); more are closed at once.")
    var maxSessions: Int = Defaults.sessionsMax

    @Option(name: .customLong("idle-timeout"), parsing: .unconditional, help: "Close a session in which no byte moved between client and main for this long; 0: never.")
    var idleTimeout: String = DurationParser.text(milliseconds: Defaults.idleTimeoutMs)

    @Option(name: .customLong("threads"), parsing: .unconditional, help: "Worker threads, each with its own ring and SO_REUSEPORT listener (default: the CPUs this process may run on).")
    var threads: Int?

    @Option(name: .customLong("mirror-linger"), parsing: .unconditional, help: "How long mirrors may flush after their client's session ended.")
    var mirrorLinger: String = DurationParser.text(milliseconds: Defaults.mirrorLingerMs)

    @Option(name: .customLong("drain-timeout"), parsing: .unconditional, help: "On SIGINT/SIGTERM, how long live sessions may finish.")
    var drainTimeout: String = DurationParser.text(milliseconds: Defaults.drainTimeoutMs)

    @Option(name: .customLong("stats-interval"), parsing: .unconditional, help: "Log one line of rates and mirror health this often (e.g. 10s); 0: never.")
    var statsInterval: String = "0"

    @Option(name: .customLong("metrics"), help: "Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).")
    var metrics: String?

    @Option(name: .customLong("backend"), help: "IO backend: auto (io_uring where it is allowed, else epoll, saying why), io_uring (an error where it is not) or epoll.")
    var backend: String = Defaults.backend.rawValue

    @Option(name: .customLong("ring-mode"), help: "Tuning: io_uring setup to try first: defer, coop or plain (falls back when refused).")
    var ringMode: String = Config.RingMode.deferTaskrun.rawValue

    @Option(name: .customLong("zerocopy"), help: "Tuning: zero-copy sends from the registered pool: auto (sends of \(SizeParser.text(Defaults.zeroCopyBytesMin)) or more to peers not on this host, where the kernel has them), on (every send; an error where the kernel has none) or off.")
    var zeroCopy: String = Defaults.zeroCopy.rawValue

    @Option(name: .customLong("wait-batch"), parsing: .unconditional, help: "Tuning: completions to wait for per wakeup under load (1: every one).")
    var waitBatch: Int = Defaults.waitBatch

    @Option(name: .customLong("wait-batch-timeout"), parsing: .unconditional, help: "Tuning: the longest --wait-batch waits before taking fewer.")
    var waitBatchTimeout: String = DurationParser.text(nanoseconds: Int64(Defaults.waitBatchTimeoutUs) * 1_000)

    @Option(name: .customLong("mirror-discard-batch"), parsing: .unconditional, help: "Discard a mirror's replies once this many bytes wait (its EOF and errors at once); 0: every reply.")
    var mirrorDiscardBatch: String = SizeParser.text(Defaults.mirrorDiscardBatchBytes)

    /// `--mirror-discard-batch`'s old name, still read (hidden): when given, it is the value.
    @Option(name: .customLong("mirror-drain-batch"), parsing: .unconditional, help: .hidden)
    var mirrorDrainBatch: String?

    @Option(name: .customLong("send-proxy"), help: ArgumentHelp("Send a PROXY protocol header (v1: text, v2: binary) with the client's address first to main and to every mirror.", valueName: "version"))
    var sendProxy: ProxyProtocol.Version?

    @Flag(name: .customLong("accept-proxy"), help: "Expect a PROXY protocol header (v1 or v2) from a load balancer on every client connection and take the client's address from it; close clients without a valid one.")
    var acceptProxy = false

    @Option(name: .customLong("proxy-header-timeout"), parsing: .unconditional, help: "With --accept-proxy: close a client whose header has not arrived in this long.")
    var proxyHeaderTimeout: String = DurationParser.text(milliseconds: Defaults.proxyHeaderTimeoutMs)

    @Flag(name: .customLong("compare"), help: "Compare each mirror's reply stream with main's, per session: match, diverged (at which offset), shorter, longer or incomplete (in the metrics and the --stats-interval line).")
    var compare = false

    @Option(name: .customLong("compare-window"), parsing: .unconditional, help: "With --compare: memory per session and mirror for the reply stream that runs ahead: 7/8 kept as bytes, the rest as digests of 4KiB blocks that reach 64 times the window; further apart is 'incomplete'. Reserved per session at start, resident only where a mirror lags.")
    var compareWindow: String = SizeParser.text(Defaults.compareWindowBytes)

    @Option(name: .customLong("dump-dir"), help: "With --compare: write one pcapng file (mode 0600: production data) per session and mirror whose replies diverged, were shorter or longer, holding client<->main and client<->mirror as two TCP conversations.")
    var dumpDir: String?

    @Option(name: .customLong("dump-bytes"), parsing: .unconditional, help: "With --dump-dir: bytes recorded per session and direction; later bytes are counted, not kept.")
    var dumpBytes: String = SizeParser.text(Defaults.dumpBytes)

    @Option(name: .customLong("dump-max-files"), parsing: .unconditional, help: "With --dump-dir: files written at most; later dumps are counted as skipped_limit.")
    var dumpMaxFiles: Int = Defaults.dumpMaxFiles

    @Option(name: .customLong("dump-queue"), parsing: .unconditional, help: "With --dump-dir: bytes of dumps waiting for the disk at most; a dump beyond is dropped, counted (dropped_queue) and logged.")
    var dumpQueue: String = SizeParser.text(Defaults.dumpQueueBytes)

    @Option(name: .customLong("mirror-batch-bytes"), parsing: .unconditional, help: "Send a mirror's queued bytes together once this many wait (or --mirror-batch-delay passed); 0: one send per receive, no batching.")
    var mirrorBatchBytes: String = SizeParser.text(Defaults.mirrorBatchBytes)

    @Option(name: .customLong("mirror-batch-delay"), parsing: .unconditional, help: "The longest a client byte waits for its mirror batch; a mirror sees bytes up to this much later (0: never wait).")
    var mirrorBatchDelay: String = DurationParser.text(nanoseconds: Int64(Defaults.mirrorBatchDelayUs) * 1_000)

    @Option(name: .customLong("mirror-turns"), parsing: .unconditional, help: "The client's first turns (bytes after main replied) a mirror gets only once it answered the turn before (SSL/STARTTLS negotiation, greetings); 0: none.")
    var mirrorTurns: Int = Defaults.mirrorTurns

    @Option(name: .customLong("mirror-turn-timeout"), parsing: .unconditional, help: "A mirror that has not answered a kept turn by then gets the next anyway, and is not waited for again in the session.")
    var mirrorTurnTimeout: String = DurationParser.text(nanoseconds: Int64(Defaults.mirrorTurnTimeoutUs) * 1_000)

    @Option(name: .customLong("handover-socket"), help: ArgumentHelp("Binary upgrade or restart without a refused connection: take the listeners (and the metrics one) from the process that holds this Unix socket, which then stops accepting, drains its sessions for --drain-timeout and exits 0; then hold it for the next one. No process there, a stale file or another listen address: bind normally (docs/handover.md).", valueName: "path"))
    var handoverSocket: String?

    @Flag(name: .customLong("check"), help: "Check the configuration (addresses, ports, loops, the IO backend, locked memory), then exit.")
    var check = false

    @Option(name: .customLong("config"), help: ArgumentHelp("A YAML file of options: keys are the long flag names without dashes (listen: :8080, mirror: [\":8082@10%\"], timeout: 2s); flags given here win. SIGHUP reads it again and applies it to new sessions (mirrors, sampling, timeouts, batching, log level); what cannot change in place is refused, and a bad file changes nothing. See docs/reload.md.", valueName: "file"))
    var configFile: String?

    @Option(name: .customLong("mirror-slots"), parsing: .unconditional, help: "Mirrors a reload may configure at most (sessions are sized for them at start; default: the mirrors given, or at least 4 with --config).")
    var mirrorSlots: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @OptionGroup(title: "TLS") var tls: TLSOptions

    /// "with io_uring (defer)", "with epoll (--backend epoll)", or epoll and why io_uring cannot run.
    static func backendNote(_ proxy: Proxy) -> String {
        let (kind, fallbackReason) = proxy.backend ?? (.ioUring, nil)
        if kind == .ioUring { return "with io_uring (\(proxy.ringSetupMode))" }
        if let fallbackReason { return "with epoll (io_uring cannot be used here: \(fallbackReason))" }
        return "with epoll (--backend epoll)"
    }

    /// The one value of an option that must be given once.
    private static func single(_ values: [String], _ flag: String, _ what: String) throws(ConfigError) -> String {
        guard let value = values.first else { throw ConfigError("Missing expected argument '\(flag) <address>' (\(what))") }
        guard values.count == 1 else {
            throw ConfigError("\(flag) given \(values.count) times (\(values.joined(separator: ", "))): give it once")
        }
        return value
    }

    /// A duration option in milliseconds; a negative one is refused by name
    /// (the parser would only say it lacks a unit).
    private static func milliseconds(_ text: String, _ flag: String) throws(ConfigError) -> Int {
        if text.hasPrefix("-") { throw ConfigError("\(flag) '\(text)': negative durations are refused") }
        return try DurationParser.milliseconds(text)
    }

    func makeConfig() throws(ConfigError) -> Config {
        let listen = try Self.single(listen, "-l", "the address to listen on")
        let forward = try Self.single(forward, "-f", "the main server")
        var mirrors: [Endpoint] = []
        var samplePercents: [Double] = []
        for part in mirror.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
            let text = String(part.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
            guard !text.isEmpty else { throw ConfigError("-m: empty mirror address in '\(mirror.joined(separator: ","))'") }
            let (address, percent) = try MirrorSampling.parse(text)
            mirrors.append(try Endpoint(parsing: address, role: .connect))
            samplePercents.append(percent ?? 100)
        }
        var config = Config(listen: try Endpoint(parsing: listen, role: .listen),
                            main: try Endpoint(parsing: forward, role: .connect),
                            mirrors: mirrors)
        if samplePercents.contains(where: { $0 < 100 }) { config.mirrorSamplePercents = samplePercents }
        config.mirrorConnectTimeoutMs = try Self.milliseconds(timeout, "-t")
        config.mainConnectTimeoutMs = try Self.milliseconds(mainConnectTimeout, "--main-connect-timeout")
        config.backlogBytesMax = try SizeParser.bytes(backlog)
        config.backlogChunksMax = backlogChunks
        config.slotSize = try SizeParser.bytes(slotSize)
        config.maxMemoryBytes = try SizeParser.bytes(maxMemory)
        config.idleTimeoutMs = try Self.milliseconds(idleTimeout, "--idle-timeout")
        config.sessionsMax = maxSessions
        config.threads = threads ?? max(1, Int(shim_cpus_allowed()))
        config.mirrorLingerMs = try Self.milliseconds(mirrorLinger, "--mirror-linger")
        config.drainTimeoutMs = try Self.milliseconds(drainTimeout, "--drain-timeout")
        guard let mode = Config.RingMode(rawValue: ringMode) else {
            throw ConfigError("--ring-mode '\(ringMode)': expected defer, coop or plain")
        }
        config.ringMode = mode
        guard let backendChoice = Config.Backend(rawValue: backend) else {
            throw ConfigError("--backend '\(backend)': expected auto, io_uring or epoll")
        }
        config.backend = backendChoice
        guard let zeroCopyMode = ZeroCopyMode(rawValue: zeroCopy) else {
            throw ConfigError("--zerocopy '\(zeroCopy)': expected auto, on or off")
        }
        config.zeroCopy = zeroCopyMode
        config.mirrorDiscardBatchBytes = try SizeParser.bytes(mirrorDrainBatch ?? mirrorDiscardBatch)
        config.compare = compare
        config.compareWindowBytes = try SizeParser.bytes(compareWindow)
        config.dumpDirectory = dumpDir
        config.dumpBytes = try SizeParser.bytes(dumpBytes)
        config.dumpMaxFiles = dumpMaxFiles
        config.dumpQueueBytes = try SizeParser.bytes(dumpQueue)
        config.waitBatch = waitBatch
        config.sendProxy = sendProxy
        config.acceptProxy = acceptProxy
        config.proxyHeaderTimeoutMs = try Self.milliseconds(proxyHeaderTimeout, "--proxy-header-timeout")
        config.mirrorBatchBytes = try SizeParser.bytes(mirrorBatchBytes)
        if mirrorBatchDelay.hasPrefix("-") {
            throw ConfigError("--mirror-batch-delay '\(mirrorBatchDelay)': negative durations are refused")
        }
        config.mirrorBatchDelayUs = Int((try DurationParser.nanoseconds(mirrorBatchDelay) + 999) / 1000)
        config.mirrorTurns = mirrorTurns
        config.mirrorTurnTimeoutUs = try Self.milliseconds(mirrorTurnTimeout, "--mirror-turn-timeout") * 1000
        if waitBatchTimeout.hasPrefix("-") {
            throw ConfigError("--wait-batch-timeout '\(waitBatchTimeout)': negative durations are refused")
        }
        config.waitBatchTimeoutUs = Int((try DurationParser.nanoseconds(waitBatchTimeout) + 999) / 1000)
        config.mirrorSlots = mirrorSlots ?? (configFile != nil ? max(Self.mirrorSlotsWithConfig, mirrors.count) : nil)
        try config.validate()
        // Last: the files are read only once everything else is right.
        config.tls = try tls.settings()
        (config.forwardTLS, config.mirrorTLS) = try tls.upstream(main: config.main)
        if config.sendProxy != nil && (config.forwardTLS != nil || config.mirrorTLS != nil) {
            throw ConfigError("--send-proxy with --forward-tls or --mirror-tls: the PROXY header would have to go before the handshake, which is not supported; use one of them")
        }
        return config
    }

    /// `--mirror-slots` when a file may add mirrors later.
    static let mirrorSlotsWithConfig = 4

    func runProxy() throws {
        guard let path = configFile else { return try startProxy(reloadFrom: nil) }
        // The file's options behind the command line's, parsed as one command line.
        let commandLine = ConfigArguments.commandLine()
        let merged: ProxyOptions
        do { merged = try ConfigArguments.options(path: path, commandLine: commandLine).0 } catch { throw ValidationError(error.message) }
        try merged.startProxy(reloadFrom: (path, commandLine))
    }

    private func startProxy(reloadFrom file: (path: String, commandLine: [String])?) throws {
        Signals.ignoreBrokenPipe()
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level '\(logLevel)': expected trace, debug, info, notice, warning, error or critical")
        }
        // "duplicator" whatever the logger's label: one name in the log.
        DuplicatorLogHandler.bootstrap(level: level)
        let config: Config
        do { config = try makeConfig() } catch {
            throw ValidationError(file.map { ConfigArguments.attributed(error, file: (try? ConfigFile.read(path: $0.path)) ?? ConfigFile(path: $0.path, entries: []), commandLine: $0.commandLine).message } ?? error.message)
        }
        var logger = Logger(label: "duplicator")
        logger.logLevel = level

        let statsIntervalMs: Int
        var metricsEndpoint: Endpoint?
        do {
            statsIntervalMs = try Self.milliseconds(statsInterval, "--stats-interval")
            try Config.checkStatsInterval(statsInterval, milliseconds: statsIntervalMs)
            if let metrics { metricsEndpoint = try Endpoint(parsing: metrics, role: .listen) }
        } catch {
            throw ValidationError(error.message)
        }

        Signals.block()
        raiseDescriptorLimit()
        let handover = try HandoverWiring.begin(path: handoverSocket, check: check, config: config, metrics: metricsEndpoint,
                                                logger: logger)
        defer { handover?.server.stop() }
        let proxy = try Proxy(config: config, metrics: metricsEndpoint, logger: logger,
                              inheritedListeners: handover?.takeover?.listeners ?? [])
        let render: @Sendable () -> String = { PrometheusText.render(proxy.snapshot()) + proxy.reloadMetricsText() }
        let metricsServer = try handover?.takeover?.metricsListener.map { try MetricsServer(listener: $0, render: render) }
            ?? metricsEndpoint.map { try MetricsServer(endpoint: $0, render: render) }
        defer { metricsServer?.stop() }
        try proxy.start()
        try handover?.serve(proxy: proxy, metricsServer: metricsServer, drainTimeout: drainTimeout, logger: logger)
        // The same facts, one per line, on stdout for --check and in the log at start.
        var facts = CheckReport.lines(config, proxy: proxy, metrics: metricsServer.map { "\($0.address)" })
        if let file {
            facts.append("configuration file: \(file.path) (digest \(proxy.currentGeneration.digest)), SIGHUP applies it again to new sessions, up to \(config.mirrorSlotCount) mirrors")
        }
        if check {
            proxy.stop(immediately: true)
            proxy.wait()
            print("configuration ok")
            for line in facts { print(line) }
            return
        }
        let metricsNote = metricsServer.map { ", metrics on http://\($0.address)/metrics" } ?? ""
        logger.info("listening on \(proxy.listenAddress), main \(config.main), mirrors \(config.mirrors.map(\.text)), on \(proxy.backend?.kind.rawValue ?? "?")\(metricsNote)")
        for line in facts { logger.info("\(line)") }
        let reloader = file.map {
            ConfigReloader(path: $0.path, commandLine: $0.commandLine, proxy: proxy, options: self,
                           statsIntervalMs: statsIntervalMs, logger: logger)
        }
        serve(proxy, statsIntervalMs: statsIntervalMs, logger: logger, reloader: reloader)
    }

    /// Waits for signals (see `Signals`): the first SIGINT/SIGTERM stops
    /// gracefully, a second at once; SIGUSR1 logs the stats line now, SIGHUP
    /// applies `--config` again to new sessions (`ConfigReloader`; without a
    /// file it is logged and ignored). Logs the stats line every `statsIntervalMs`.
    private func serve(_ proxy: Proxy, statsIntervalMs: Int, logger: Logger, reloader: ConfigReloader?) {
        var stopSignals = 0
        var previous = proxy.snapshot()
        var previousSeconds = MonotonicClock.nowSeconds()
        // Each line covers the time since the previous one, whoever asked for it.
        func logStats() {
            let now = MonotonicClock.nowSeconds()
            let current = proxy.snapshot()
            logger.info("\(StatsLine.render(from: previous, to: current, seconds: now - previousSeconds))")
            previous = current
            previousSeconds = now
        }
        while true {
            let statsIntervalMs = reloader?.statsIntervalMs ?? statsIntervalMs
            if statsIntervalMs > 0 && MonotonicClock.nowSeconds() - previousSeconds >= Double(statsIntervalMs) / 1000 {
                logStats()
            }
            switch Signals.wait(timeoutMs: 100) {
            case .stop(let signal):
                stopSignals += 1
                if stopSignals == 1 {
                    logger.notice("\(Signals.name(signal)): draining \(Counted.text(proxy.activeSessions, "session")) for up to \(drainTimeout)")
                    proxy.stop()
                } else {
                    logger.notice("\(Signals.name(signal)) again: closing every session now")
                    proxy.stop(immediately: true)
                }
            case .logStats:
                logStats()
            case .reload:
                if let reloader {
                    reloader.reload()
                } else {
                    logger.notice("SIGHUP: ignored; there is no configuration file to reload (--config; restart with new flags to change them)")
                }
            case nil:
                break
            }
            if proxy.hasExited { break }
        }
        proxy.wait()
        logger.info("stopped")
    }

    /// A proxy holds two or more descriptors per session: take the hard
    /// limit of open files, not the soft one (often 1024), as Go and nginx do.
    private func raiseDescriptorLimit() {
        var limit = rlimit()
        let resource = __rlimit_resource_t(7)  // RLIMIT_NOFILE
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(resource, &limit)
    }
}


extension ProxyProtocol.Version: ExpressibleByArgument {}
