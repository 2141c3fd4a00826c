import Duplicator
import Logging
import Synchronization

/// The log level every logger of the process follows, changed in place by a
/// reload: loggers copy their handler, so the level lives here, read on
/// each log call (one relaxed atomic load).
final class LogLevelControl: Sendable {
    static let shared = LogLevelControl()
    private let level = Atomic<Int>(Logger.Level.info.index)

    var current: Logger.Level {
        get { Logger.Level.allCases[level.load(ordering: .relaxed)] }
        set { level.store(newValue.index, ordering: .relaxed) }
    }
}

extension Logger.Level {
    fileprivate var index: Int { Logger.Level.allCases.firstIndex(of: self) ?? 2 }
}

/// SIGHUP with `--config FILE`: reads the file again, merges it with the
/// command line as at start, and applies the result to new sessions, or
/// refuses it whole with one line naming the key and the reason.
final class ConfigReloader {
    let path: String
    let commandLine: [String]
    let proxy: Proxy
    let logger: Logger
    /// The running options (what the file and command line gave at the last
    /// reload that applied): for the settings the CLI owns.
    private(set) var options: ProxyOptions
    /// `--stats-interval`, which a reload may change.
    private(set) var statsIntervalMs: Int

    init(path: String, commandLine: [String], proxy: Proxy, options: ProxyOptions, statsIntervalMs: Int, logger: Logger) {
        self.path = path
        self.commandLine = commandLine
        self.proxy = proxy
        self.options = options
        self.statsIntervalMs = statsIntervalMs
        self.logger = logger
    }

    /// One reload; logs what it did or why nothing changed.
    func reload() {
        var countedByProxy = false
        do throws(ConfigError) {
            let (config, newOptions, file) = try ConfigArguments.config(path: path, commandLine: commandLine)
            let level = newOptions.observability.logLevel.level
            let intervalMs = newOptions.observability.statsInterval.milliseconds
            do throws(ConfigError) {
                try Config.checkStatsInterval(milliseconds: intervalMs)
            } catch {
                throw ConfigArguments.attributed(error, file: file, commandLine: commandLine)
            }
            if newOptions.observability.metrics != options.observability.metrics {
                throw ConfigError("config file \(path): key 'metrics': cannot change in place: that needs a new process "
                    + "(a restart, or a handover with --handover-socket)")
            }
            let summary: String
            do throws(ConfigError) {
                summary = try proxy.reload(to: config)
            } catch {
                countedByProxy = true
                throw ConfigArguments.attributed(error, file: file, commandLine: commandLine)
            }
            let levelNote = level == LogLevelControl.shared.current ? "" : "; log level \(level.rawValue)"
            LogLevelControl.shared.current = level
            statsIntervalMs = intervalMs
            options = newOptions
            logger.notice("SIGHUP: reloaded \(path): \(summary)\(levelNote)")
        } catch {
            // Counted once: the proxy counts what it refused itself.
            if !countedByProxy { proxy.reloadFailed() }
            logger.error("SIGHUP: \(error.message); the running configuration is kept")
        }
    }
}
