/// What a HostileClient run saw. Every connection ends in exactly one of: open at the
/// end, still connecting at the end, refused, failed to connect otherwise, reset, or
/// closed by the peer.
public struct HostileResult: Sendable, Equatable {
    public var mode: HostileMode
    public var connectionsRequested: Int
    /// Connections whose connect completed (some may have ended since).
    public var connectionsOpened = 0
    /// Connects answered with ECONNREFUSED.
    public var connectionsRefused = 0
    /// Connects that failed otherwise (timed out, no ports or descriptors left).
    public var connectFailures = 0
    /// Open connections that ended with an error (ECONNRESET, EPIPE...): a proxy's
    /// timeout or admission control usually shows here.
    public var connectionsReset = 0
    /// Open connections the peer closed (FIN).
    public var connectionsClosedByPeer = 0
    public var connectionsOpenAtEnd = 0
    public var connectionsConnectingAtEnd = 0
    /// stall and slow-read: requests that went out whole (a slow reader asks again
    /// each time it has read a whole reply).
    public var requestsSent = 0
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var durationSeconds: Double = 0
    public var firstErrorDescription: String?

    public init(mode: HostileMode, connectionsRequested: Int) {
        self.mode = mode
        self.connectionsRequested = connectionsRequested
    }

    /// Refused, failed to connect, reset or closed by the peer.
    public var connectionsEnded: Int {
        connectionsRefused + connectFailures + connectionsReset + connectionsClosedByPeer
    }

    public var summary: String {
        var lines = [
            "hostile \(mode): \(connectionsOpened) of \(connectionsRequested) connections opened in \(DecimalText.fixed(durationSeconds, 2)) s;"
                + " at the end \(connectionsOpenAtEnd) open, \(connectionsConnectingAtEnd) still connecting",
            "refused \(connectionsRefused), connect failures \(connectFailures), reset \(connectionsReset),"
                + " closed by peer \(connectionsClosedByPeer)",
            "requests sent \(requestsSent), bytes sent \(bytesSent), bytes received \(bytesReceived)",
        ]
        if let firstErrorDescription { lines.append("first error: \(firstErrorDescription)") }
        return lines.joined(separator: "\n")
    }

    /// One JSON object on one line, for scripts.
    public var jsonLine: String {
        var fields: [(String, String)] = [
            ("mode", DecimalText.jsonString(mode.rawValue)),
            ("connections", "\(connectionsRequested)"),
            ("opened", "\(connectionsOpened)"),
            ("refused", "\(connectionsRefused)"),
            ("connect_failures", "\(connectFailures)"),
            ("reset", "\(connectionsReset)"),
            ("closed_by_peer", "\(connectionsClosedByPeer)"),
            ("open_at_end", "\(connectionsOpenAtEnd)"),
            ("connecting_at_end", "\(connectionsConnectingAtEnd)"),
            ("requests_sent", "\(requestsSent)"),
            ("bytes_sent", "\(bytesSent)"),
            ("bytes_received", "\(bytesReceived)"),
            ("duration_s", DecimalText.fixed(durationSeconds, 6)),
        ]
        if let firstErrorDescription { fields.append(("first_error", DecimalText.jsonString(firstErrorDescription))) }
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}

/// A HostileClient's once-a-second report.
public struct HostileProgress: Sendable, Equatable {
    public var elapsedSeconds: Double
    public var connectionsOpen: Int
    public var connectionsConnecting: Int
    /// Connects not started yet (paced by `connectsInFlightMax`).
    public var connectionsWaiting: Int
    public var connectionsEnded: Int
    public var requestsSent: Int
    public var bytesSent: UInt64
    public var bytesReceived: UInt64

    /// "key=value" pairs on one line: readable, and easy for a script to wait on.
    public var line: String {
        "hostile t=\(DecimalText.fixed(elapsedSeconds, 1)) open=\(connectionsOpen) connecting=\(connectionsConnecting)"
            + " waiting=\(connectionsWaiting) ended=\(connectionsEnded) requests_sent=\(requestsSent)"
            + " bytes_sent=\(bytesSent) bytes_received=\(bytesReceived)"
    }
}
