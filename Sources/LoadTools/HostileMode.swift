/// How a hostile client misbehaves (see `HostileClient`).
public enum HostileMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Sends one large request (whose echo is as large) and never reads.
    case stall
    /// Sends the same request, then reads a small chunk now and then: an honest slow
    /// downloader. It asks again after each whole reply.
    case slowRead = "slow-read"
    /// Sends one byte now and then and never a '\n', so no message ever completes;
    /// reads whatever comes back.
    case slowloris

    public var description: String { rawValue }

    /// Whether a connection starts with the large request.
    var sendsRequest: Bool { self != .slowloris }
}
