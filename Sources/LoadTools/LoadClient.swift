/// A closed-loop TCP load generator for echo servers, and proxies in front of them.
///
/// Each of `connections` connections sends a `messageSizeBytes` request ending in '\n',
/// waits until exactly that many bytes came back and equal what it sent, records the
/// round trip in an HdrHistogram, and sends the next. All connections share one thread
/// (the caller's, in `run`) and one io_uring (`RingLoadClientLoop`), or one epoll set
/// where io_uring cannot be had or `backend` is `.epoll` (`LoadClientLoop`).
///
/// A connection that fails (refused connect, reset, EOF, or a reply that differs from
/// the request) counts one error, is closed and is not replaced: a failure stays visible
/// in the rate instead of being papered over, and a dead server costs no reconnect storm.
/// The run ends early when every connection has failed.
public final class LoadClient: Sendable {
    public let address: LoadAddress
    public let connections: Int
    public let messageSizeBytes: Int
    public let durationSeconds: Double
    /// Open loop: requests per second over all connections, sent at fixed
    /// times whatever the replies do; nil: closed loop.
    public let requestsPerSecond: Double?
    public let backend: LoadClientBackend
    /// io_uring: false forces single-shot recvs into buffers of the client's own,
    /// the path of kernels without multishot recv (for tests).
    let multishotReceives: Bool

    public static let messageSizeBytesMax = 1 << 30

    private let control: LoadClientControl

    /// Throws `LoadClientError` for a bad parameter.
    public convenience init(address: LoadAddress, connections: Int = 10, messageSizeBytes: Int = 1024, durationSeconds: Double = 10,
                requestsPerSecond: Double? = nil, backend: LoadClientBackend = .automatic) throws {
        try self.init(address: address, connections: connections, messageSizeBytes: messageSizeBytes,
                      durationSeconds: durationSeconds, requestsPerSecond: requestsPerSecond, backend: backend,
                      multishotReceives: true)
    }

    init(address: LoadAddress, connections: Int, messageSizeBytes: Int, durationSeconds: Double,
         requestsPerSecond: Double?, backend: LoadClientBackend, multishotReceives: Bool) throws {
        guard connections >= 1 else { throw LoadClientError.invalidConnections(connections) }
        guard messageSizeBytes >= 1, messageSizeBytes <= Self.messageSizeBytesMax else {
            throw LoadClientError.invalidMessageSize(messageSizeBytes)
        }
        guard durationSeconds > 0, durationSeconds.isFinite else { throw LoadClientError.invalidDuration(durationSeconds) }
        if let requestsPerSecond, !(requestsPerSecond > 0 && requestsPerSecond.isFinite && requestsPerSecond <= 1e8) {
            throw LoadClientError.invalidRate(requestsPerSecond)
        }
        self.requestsPerSecond = requestsPerSecond
        self.backend = backend
        self.multishotReceives = multishotReceives
        self.address = address
        self.connections = connections
        self.messageSizeBytes = messageSizeBytes
        self.durationSeconds = durationSeconds
        control = try LoadClientControl()
    }

    /// Runs the load on the calling thread for `durationSeconds` (less after `stop()` or
    /// when every connection failed) and returns what it measured. `onSecond` is called
    /// on this thread once a second. Throws only when the run cannot start (the address
    /// does not resolve, no epoll, no io_uring with `.ioUring`, or a run is already going on).
    public func run(onSecond: (LoadProgress) -> Void = { _ in }) throws -> LoadResult {
        guard !control.running.exchange(true, ordering: .acquiring) else { throw LoadClientError.alreadyRunning }
        defer { control.running.store(false, ordering: .releasing) }
        let target = try address.resolve(for: .connect)
        var epollDescription = "epoll"
        if backend != .epoll {
            do {
                let loop = try RingLoadClientLoop(
                    target: target, connections: connections, messageSizeBytes: messageSizeBytes,
                    durationSeconds: durationSeconds, requestsPerSecond: requestsPerSecond, control: control,
                    multishotReceives: multishotReceives)
                return loop.run(onSecond: onSecond)
            } catch {
                if backend == .ioUring { throw LoadClientError.ioUringUnavailable("\(error)") }
                epollDescription = "epoll (io_uring: \(error))"
            }
        }
        let loop = try LoadClientLoop(
            target: target, connections: connections, messageSizeBytes: messageSizeBytes,
            durationSeconds: durationSeconds, requestsPerSecond: requestsPerSecond, control: control,
            backendDescription: epollDescription)
        return loop.run(onSecond: onSecond)
    }

    /// Ends a run soon, from any thread; it returns its result as usual. Lasting: a run
    /// started after stop() returns at once.
    public func stop() {
        control.stopRequested.store(true, ordering: .releasing)
        control.wakeup.signal()
    }
}

public enum LoadClientError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidConnections(Int)
    case invalidMessageSize(Int)
    case invalidDuration(Double)
    case invalidRate(Double)
    case alreadyRunning
    case ioUringUnavailable(String)

    public var description: String {
        switch self {
        case .invalidConnections(let count):
            "connections must be at least 1 (got \(count))"
        case .invalidMessageSize(let size):
            "message size must be from 1 to \(LoadClient.messageSizeBytesMax) bytes (got \(size))"
        case .invalidDuration(let seconds):
            "duration must be a positive number of seconds (got \(seconds))"
        case .invalidRate(let rate):
            "the rate must be a positive number of requests per second, at most 1e8 (got \(rate))"
        case .alreadyRunning:
            "this load client is already running"
        case .ioUringUnavailable(let reason):
            "io_uring is not available (\(reason)); --backend epoll or auto uses epoll"
        }
    }
}
