/// A LoadClient's once-a-second report.
public struct LoadProgress: Sendable {
    public let elapsedSeconds: Double
    public let intervalSeconds: Double
    /// Requests completed in the last interval.
    public let intervalRequests: UInt64
    public let requests: UInt64
    public let errors: UInt64
    /// Connections established and not failed.
    public let connectionsActive: Int

    public var requestsPerSecond: Double {
        intervalSeconds > 0 ? Double(intervalRequests) / intervalSeconds : 0
    }
}
