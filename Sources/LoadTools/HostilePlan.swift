/// What a HostileClient run does: its mode, how many connections, and the pace of
/// their misbehaviour. Validated once, so the loop needs no checks.
public struct HostilePlan: Sendable, Equatable {
    public var mode: HostileMode
    public var connections: Int
    public var durationSeconds: Double
    /// The request of stall and slow-read connections; with an echo server as main,
    /// the reply is as large. 1 MiB is far more than the socket buffers between the
    /// proxy and a client that does not read, so the rest waits in the proxy.
    public var requestBytes: Int = 1 << 20
    /// slow-read: bytes read at each turn, and the time between turns (4 KiB every
    /// 125 ms is 32 KiB/s, a slow mobile download).
    public var readChunkBytes: Int = 4096
    public var readIntervalMs: Int = 125
    /// slowloris: one byte this often.
    public var trickleIntervalMs: Int = 1000
    /// SO_RCVBUF of each connection, set before it connects; 0 keeps the system's
    /// default (tcp_rmem, autotuned). A small one offers the peer a small window, as
    /// slow-read attacks do.
    public var receiveBufferBytes: Int = 0
    /// Connects started but not yet completed, at most: thousands at once would
    /// overflow the peer's accept queue and come back as SYN retries a second later.
    public var connectsInFlightMax: Int = 256

    public static let connectionsMax = 1 << 20
    public static let requestBytesMax = 1 << 30
    public static let intervalMsMax = 3_600_000

    public init(mode: HostileMode, connections: Int, durationSeconds: Double) {
        self.mode = mode
        self.connections = connections
        self.durationSeconds = durationSeconds
    }

    /// Throws the first parameter out of range.
    public func validate() throws(HostileClientError) {
        guard (1...Self.connectionsMax).contains(connections) else { throw .invalid("connections", "\(connections)", "1 to \(Self.connectionsMax)") }
        guard durationSeconds > 0, durationSeconds.isFinite else {
            throw .invalid("duration", "\(durationSeconds)", "a positive number of seconds")
        }
        guard (1...Self.requestBytesMax).contains(requestBytes) else {
            throw .invalid("request bytes", "\(requestBytes)", "1 to \(Self.requestBytesMax)")
        }
        guard (1...(1 << 24)).contains(readChunkBytes) else { throw .invalid("read chunk bytes", "\(readChunkBytes)", "1 to \(1 << 24)") }
        guard (1...Self.intervalMsMax).contains(readIntervalMs) else {
            throw .invalid("read interval", "\(readIntervalMs) ms", "1 to \(Self.intervalMsMax) ms")
        }
        guard (1...Self.intervalMsMax).contains(trickleIntervalMs) else {
            throw .invalid("trickle interval", "\(trickleIntervalMs) ms", "1 to \(Self.intervalMsMax) ms")
        }
        guard (0...(1 << 30)).contains(receiveBufferBytes) else {
            throw .invalid("receive buffer bytes", "\(receiveBufferBytes)", "0 to \(1 << 30)")
        }
        guard connectsInFlightMax >= 1 else { throw .invalid("connects in flight", "\(connectsInFlightMax)", "at least 1") }
    }

    /// The pause between one connection's turns (reads or trickled bytes); 0 for stall.
    var turnIntervalNanos: UInt64 {
        switch mode {
        case .stall: 0
        case .slowRead: UInt64(readIntervalMs) * 1_000_000
        case .slowloris: UInt64(trickleIntervalMs) * 1_000_000
        }
    }
}

public enum HostileClientError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalid(String, String, String)
    case alreadyRunning

    public var description: String {
        switch self {
        case .invalid(let name, let value, let range): "\(name) must be \(range) (got \(value))"
        case .alreadyRunning: "this hostile client is already running"
        }
    }
}
