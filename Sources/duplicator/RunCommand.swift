import ArgumentParser
import CLinuxSystem
import Duplicator
import Glibc
import Logging
import Platform

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

    // The groups of options, in the order --help shows them (the untitled
    // ones below come last, with --help and --version). A feature with its
    // own options adds its own group here (TLS, recording), in its own file.
    @OptionGroup(title: "Addresses") var addresses: AddressOptions
    @OptionGroup(title: "Mirrors") var mirrors: MirrorOptions
    @OptionGroup(title: "Limits and timeouts") var limits: LimitOptions
    @OptionGroup(title: "Verdicts and recording") var verdicts: VerdictOptions
    @OptionGroup(title: "Recording") var recording: RecordingOptions
    @OptionGroup(title: "Observability") var observability: ObservabilityOptions
    @OptionGroup(title: "Tuning") var tuning: TuningOptions

    @Option(name: .customLong("config"), help: ArgumentHelp("A YAML file of options: keys are the long flag names without dashes (listen: :8080, mirror: [\":8082@10%\"], timeout: 2s); flags given here win. SIGHUP reads it again and applies it to new sessions (mirrors, sampling, timeouts, batching, --compare, dump bounds, log level); what cannot change in place is refused, and a bad file changes nothing. See docs/reload.md.", valueName: "file"))
    var configFile: String?

    @Flag(name: .customLong("check"), help: "Check the configuration (addresses, ports, loops, the IO backend, locked memory), then exit.")
    var check = false

    @Option(name: .customLong("backend"), help: "IO backend: auto (io_uring where it is allowed, else epoll, saying why), io_uring (an error where it is not) or epoll.")
    var backend: Config.Backend = Defaults.backend

    @Option(name: .customLong("handover-socket"), help: ArgumentHelp("Binary upgrade or restart without a refused connection: take the listeners (and the metrics one) from the process that holds this Unix socket, which then stops accepting, drains its sessions for --drain-timeout and exits 0; then hold it for the next one. No process there, a stale file or another listen address: bind normally (docs/handover.md).", valueName: "path"))
    var handoverSocket: String?

    /// "with io_uring (defer)", "with epoll (--backend epoll)", or epoll and why io_uring cannot run.
    static func backendNote(_ proxy: Proxy) -> String {
        let (kind, fallbackReason) = proxy.backend ?? (.ioUring, nil)
        if kind == .ioUring { return "with io_uring (\(proxy.ringSetupMode))" }
        if let fallbackReason { return "with epoll (io_uring cannot be used here: \(fallbackReason))" }
        return "with epoll (--backend epoll)"
    }

    /// The one value of an option that must be given once.
    private static func single<Value: ExpressibleByArgument>(_ values: [Value], _ flag: String, _ what: String) throws(ConfigError) -> Value {
        guard let value = values.first else { throw ConfigError("Missing expected argument '\(flag) <address>' (\(what))") }
        guard values.count == 1 else {
            throw ConfigError("\(flag) given \(values.count) times (\(values.map(\.defaultValueDescription).joined(separator: ", "))): give it once")
        }
        return value
    }

    /// The values are parsed already (each option's type); this puts them
    /// together and checks what no single one can say (`Config.validate`).
    func makeConfig() throws(ConfigError) -> Config {
        let listen = try Self.single(addresses.listen, "-l", "the address to listen on")
        let forward = try Self.single(addresses.forward, "-f", "the main server")
        let mirrorList = mirrors.mirrors
        var config = Config(listen: listen.endpoint, main: forward.endpoint, mirrors: mirrorList.map(\.endpoint))
        if mirrorList.contains(where: { $0.samplePercent != nil }) {
            config.mirrorSamplePercents = mirrorList.map { $0.samplePercent ?? 100 }
        }
        addresses.apply(to: &config)
        mirrors.apply(to: &config)
        limits.apply(to: &config)
        verdicts.apply(to: &config)
        tuning.apply(to: &config)
        config.recording = try recording.config()
        config.backend = backend
        config.mirrorSlots = mirrors.mirrorSlots ?? (configFile != nil ? max(Self.mirrorSlotsWithConfig, mirrorList.count) : nil)
        try config.validate()
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
        let level = observability.logLevel.level
        // "duplicator" whatever the logger's label: one name in the log.
        DuplicatorLogHandler.bootstrap(level: level)
        let config: Config
        let statsIntervalMs = observability.statsInterval.milliseconds
        do {
            config = try makeConfig()
            try Config.checkStatsInterval(milliseconds: statsIntervalMs)
        } catch {
            throw ValidationError(file.map { ConfigArguments.attributed(error, file: (try? ConfigFile.read(path: $0.path)) ?? ConfigFile(path: $0.path, entries: []), commandLine: $0.commandLine).message } ?? error.message)
        }
        var logger = Logger(label: "duplicator")
        logger.logLevel = level
        let metricsEndpoint = observability.metrics?.endpoint

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
        try handover?.serve(proxy: proxy, metricsServer: metricsServer, drainTimeout: limits.drainTimeout.defaultValueDescription, logger: logger)
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
                    logger.notice("\(Signals.name(signal)): draining \(Counted.text(proxy.activeSessions, "session")) for up to \(limits.drainTimeout.defaultValueDescription)")
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
