import ArgumentParser
import Duplicator

/// What the proxy tells: metrics, the periodic stats line, the log.
struct ObservabilityOptions: ParsableArguments {
    @Option(name: .customLong("metrics"), help: "Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).")
    var metrics: ListenAddress?

    @Option(name: .customLong("stats-interval"), parsing: .unconditional, help: "Log one line of rates and mirror health this often (e.g. 10s); 0: never.")
    var statsInterval = Milliseconds(0)

    @Option(name: .customLong("log-level"), help: "The least important messages logged.")
    var logLevel = LogLevel(level: .info)
}
