/// How a TestServer treats the bytes of its connections.
public enum TestServerMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Writes back every byte it reads. While a reply is not fully written it stops
    /// reading that connection (back-pressure), so memory stays at one buffer per connection.
    case echo
    /// Reads and drops.
    case sink
    /// Accepts and never reads, keeping the connections open until stop(): a peer that
    /// stops reading.
    case stall
    /// A listener whose accept queue is full, so a new connect() never completes: a
    /// host that drops SYNs.
    case blackhole

    public var description: String { rawValue }
}
