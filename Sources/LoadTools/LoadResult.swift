/// What one LoadClient run measured. Latencies are round trips in microseconds.
public struct LoadResult: Sendable, Equatable {
    /// Requests whose full, correct response arrived.
    public let requests: UInt64
    /// From the first connect to the end of the run.
    public let durationSeconds: Double
    public let latencyP50Micros: Double
    public let latencyP90Micros: Double
    public let latencyP99Micros: Double
    public let latencyP999Micros: Double
    public let latencyP9999Micros: Double
    public let latencyMaxMicros: Double
    public let latencyMeanMicros: Double
    /// Connections that failed (each once): refused, reset, closed, or a wrong reply.
    public let errors: UInt64
    public let firstErrorDescription: String?
    public let connectionsRequested: Int
    public let connectionsEstablished: Int
    public let messageSizeBytes: Int
    public let bytesSent: UInt64
    public let bytesReceived: UInt64
    /// CPU time (user and system) of the client's thread during the run.
    public let clientCPUSeconds: Double
    /// Open loop (`--rate`): the fixed rate asked for; latencies then count
    /// from each request's due time. 0: closed loop.
    public let requestsPerSecondAsked: Double
    /// How the client did its IO: "io_uring (multishot receives)", "io_uring
    /// (single-shot receives)" or "epoll", with why it fell back, if it did.
    public let backend: String

    public init(requests: UInt64, durationSeconds: Double, latencyP50Micros: Double, latencyP90Micros: Double,
                latencyP99Micros: Double, latencyP999Micros: Double, latencyP9999Micros: Double = 0,
                latencyMaxMicros: Double, latencyMeanMicros: Double,
                errors: UInt64, firstErrorDescription: String?, connectionsRequested: Int, connectionsEstablished: Int,
                messageSizeBytes: Int, bytesSent: UInt64, bytesReceived: UInt64, clientCPUSeconds: Double,
                requestsPerSecondAsked: Double = 0, backend: String = "epoll") {
        self.backend = backend
        self.requests = requests
        self.durationSeconds = durationSeconds
        self.latencyP50Micros = latencyP50Micros
        self.latencyP90Micros = latencyP90Micros
        self.latencyP99Micros = latencyP99Micros
        self.latencyP999Micros = latencyP999Micros
        self.latencyP9999Micros = latencyP9999Micros
        self.requestsPerSecondAsked = requestsPerSecondAsked
        self.latencyMaxMicros = latencyMaxMicros
        self.latencyMeanMicros = latencyMeanMicros
        self.errors = errors
        self.firstErrorDescription = firstErrorDescription
        self.connectionsRequested = connectionsRequested
        self.connectionsEstablished = connectionsEstablished
        self.messageSizeBytes = messageSizeBytes
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.clientCPUSeconds = clientCPUSeconds
    }

    public var requestsPerSecond: Double {
        durationSeconds > 0 ? Double(requests) / durationSeconds : 0
    }

    /// The client's own CPU cost per request; compare it with the proxy's.
    public var clientCPUMicrosPerRequest: Double {
        requests > 0 ? clientCPUSeconds * 1e6 / Double(requests) : 0
    }

    /// Share of one core the client used: near 1 means the client, not the system under
    /// test, may have set the rate.
    public var clientCPUCoreFraction: Double {
        durationSeconds > 0 ? clientCPUSeconds / durationSeconds : 0
    }

    /// A few lines for people.
    public var summary: String {
        let fixed = DecimalText.fixed
        var lines = [
            "\(fixed(requestsPerSecond, 1)) requests/s (\(requests) requests in \(fixed(durationSeconds, 2)) s,"
                + " \(connectionsEstablished) of \(connectionsRequested) connections, \(messageSizeBytes)-byte messages)",
            (requestsPerSecondAsked > 0 ? "open loop at \(fixed(requestsPerSecondAsked, 0)) requests/s, latency from each request's due time\n" : "")
                + "latency us: p50 \(fixed(latencyP50Micros, 1))  p90 \(fixed(latencyP90Micros, 1))"
                + "  p99 \(fixed(latencyP99Micros, 1))  p99.9 \(fixed(latencyP999Micros, 1))"
                + (requestsPerSecondAsked > 0 ? "  p99.99 \(fixed(latencyP9999Micros, 1))" : "")
                + "  max \(fixed(latencyMaxMicros, 1))",
            "errors: \(errors)   client CPU: \(fixed(clientCPUMicrosPerRequest, 2)) us/request"
                + " (\(fixed(clientCPUCoreFraction * 100, 0))% of a core, \(backend))",
        ]
        if let firstErrorDescription {
            lines.append("first error: \(firstErrorDescription)")
        }
        return lines.joined(separator: "\n")
    }

    /// One JSON object on one line, for scripts. "bytes" counts both directions.
    public var jsonLine: String {
        let fixed = DecimalText.fixed
        var fields: [(String, String)] = [
            ("rps", fixed(requestsPerSecond, 1)),
            ("requests", "\(requests)"),
            ("errors", "\(errors)"),
            ("p50_us", fixed(latencyP50Micros, 3)),
            ("p90_us", fixed(latencyP90Micros, 3)),
            ("p99_us", fixed(latencyP99Micros, 3)),
            ("p999_us", fixed(latencyP999Micros, 3)),
            ("p9999_us", fixed(latencyP9999Micros, 3)),
            ("rate", fixed(requestsPerSecondAsked, 1)),
            ("max_us", fixed(latencyMaxMicros, 3)),
            ("mean_us", fixed(latencyMeanMicros, 3)),
            ("client_cpu_us_per_req", fixed(clientCPUMicrosPerRequest, 3)),
            ("client_cpu_s", fixed(clientCPUSeconds, 6)),
            ("bytes", "\(bytesSent &+ bytesReceived)"),
            ("bytes_sent", "\(bytesSent)"),
            ("bytes_received", "\(bytesReceived)"),
            ("duration_s", fixed(durationSeconds, 6)),
            ("connections", "\(connectionsRequested)"),
            ("connections_established", "\(connectionsEstablished)"),
            ("size", "\(messageSizeBytes)"),
            ("backend", DecimalText.jsonString(backend)),
        ]
        if let firstErrorDescription {
            fields.append(("first_error", DecimalText.jsonString(firstErrorDescription)))
        }
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}
