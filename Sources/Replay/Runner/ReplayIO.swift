import Platform

/// What the replay engine asks of its IO: one connect, one send and one
/// receive at a time per connection slot, each answered later by the
/// engine's `connected`, `sent` and `received` with the syscall's result
/// (a count, or a negated errno). The io_uring driver (`RingReplayDriver`)
/// and the epoll driver (`EpollReplayDriver`) implement it; the engine's
/// logic is the same over both.
public protocol ReplayIO: AnyObject {
    func connect(slot: Int, fd: Int32)
    func send(slot: Int, fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int)
    func receive(slot: Int, fd: Int32, into buffer: UnsafeMutableRawPointer, _ count: Int)
}

/// How a replay runs (`duplicator replay`'s flags).
public struct ReplayOptions: Sendable {
    public enum Speed: Sendable, Equatable {
        /// The recorded gaps between session starts divided by this.
        case scaled(Double)
        /// Each session as soon as a connection is free.
        case max
    }

    public var target: SocketAddress
    public var speed: Speed = .scaled(1)
    /// Sessions at once, at most.
    public var connectionsMax = 256
    public var compare = false
    /// How long a turn waits for the target's reply before the next is sent anyway.
    public var turnTimeoutMs = 1_000
    /// Bytes each receive takes at most (also the most a comparison's recorded side leads by).
    public var receiveBytes = 16 << 10
    /// A comparison's window (`ReplyComparison`).
    public var compareWindowBytes = 64 << 10
    /// With `--dump-dir`: the target's reply bytes kept per session for the dump.
    public var dumpBytes = 1 << 20

    public init(target: SocketAddress) {
        self.target = target
    }
}
