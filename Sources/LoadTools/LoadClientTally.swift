import Histogram

/// What a LoadClient run counts, whichever loop drives it (epoll or io_uring):
/// the latency histogram, requests, bytes, connections and failures, and the
/// result built from them. One definition, so both backends report alike.
struct LoadClientTally {
    static let latencyNanosMax: UInt64 = 60_000_000_000

    // Nanoseconds, 1 ns to 60 s, 3 significant digits: sub-microsecond detail for
    // loopback round trips, about 200 KiB of buckets, allocated once.
    private(set) var latencyNanos = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: LoadClientTally.latencyNanosMax, numberOfSignificantValueDigits: .three)
    private(set) var requests: UInt64 = 0
    private(set) var errors: UInt64 = 0
    private(set) var firstErrorDescription: String?
    var bytesSent: UInt64 = 0
    var bytesReceived: UInt64 = 0
    var connectionsEstablished = 0
    var connectionsActive = 0
    /// Connecting or active.
    var connectionsLive = 0

    @inline(__always)
    mutating func recordRequest(latencyNanos nanos: UInt64) {
        latencyNanos.record(min(nanos, Self.latencyNanosMax))
        requests += 1
    }

    /// A connection failed (once): it is no longer live.
    mutating func recordFailure(connection index: Int, _ reason: String) {
        errors += 1
        connectionsLive -= 1
        if firstErrorDescription == nil {
            firstErrorDescription = "connection \(index): \(reason)"
        }
    }

    /// A failure of the whole run (not of one connection), e.g. the ring refusing a wait.
    mutating func recordRunFailure(_ reason: String) {
        errors += 1
        if firstErrorDescription == nil { firstErrorDescription = reason }
    }

    func progress(elapsedNanos: UInt64, intervalNanos: UInt64, intervalRequests: UInt64) -> LoadProgress {
        LoadProgress(elapsedSeconds: Double(elapsedNanos) / 1e9, intervalSeconds: Double(intervalNanos) / 1e9,
                     intervalRequests: intervalRequests, requests: requests, errors: errors,
                     connectionsActive: connectionsActive)
    }

    func result(elapsedNanos: UInt64, cpuNanos: UInt64, connectionsRequested: Int, messageSizeBytes: Int,
                requestsPerSecondAsked: Double, backend: String) -> LoadResult {
        func micros(_ nanos: UInt64) -> Double { Double(nanos) / 1000 }
        let empty = latencyNanos.totalCount == 0
        return LoadResult(
            requests: requests,
            durationSeconds: Double(elapsedNanos) / 1e9,
            latencyP50Micros: micros(latencyNanos.valueAtPercentile(50)),
            latencyP90Micros: micros(latencyNanos.valueAtPercentile(90)),
            latencyP99Micros: micros(latencyNanos.valueAtPercentile(99)),
            latencyP999Micros: micros(latencyNanos.valueAtPercentile(99.9)),
            latencyP9999Micros: micros(latencyNanos.valueAtPercentile(99.99)),
            latencyMaxMicros: empty ? 0 : micros(latencyNanos.max),
            latencyMeanMicros: empty ? 0 : latencyNanos.mean / 1000,
            errors: errors,
            firstErrorDescription: firstErrorDescription,
            connectionsRequested: connectionsRequested,
            connectionsEstablished: connectionsEstablished,
            messageSizeBytes: messageSizeBytes,
            bytesSent: bytesSent,
            bytesReceived: bytesReceived,
            clientCPUSeconds: Double(cpuNanos) / 1e9,
            requestsPerSecondAsked: requestsPerSecondAsked,
            backend: backend)
    }
}
