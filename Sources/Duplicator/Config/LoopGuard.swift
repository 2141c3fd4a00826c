import Platform
import Synchronization

/// The run-time backstop against loops that the start-up checks cannot see:
/// a NAT rule that redirects the proxy's own connections to main or a
/// mirror back into its listener, or a target address that became one of
/// this host's after start. Unchecked, each looped connection starts a new
/// session that connects again, until descriptors or admission run out.
///
/// A loop is recognised exactly, never guessed: an accepted connection is
/// ours when its source (address and port) is the local address of one of
/// our outbound connections *and* it was addressed (before any NAT) to that
/// connection's target. Two sockets of this host cannot share that whole
/// pair, so a client whose ephemeral port happens to equal one of ours, or a
/// transparent setup that redirects other programs' traffic for main to us
/// (and exempts ours), is never refused.
///
/// Only accepted connections from this host that were addressed to a
/// target are looked at ("suspects"), which never happens in a plain
/// deployment, and until the first one arrives nothing at all is recorded,
/// so the data path pays nothing. That first suspect arms the guard; from
/// then on every outbound connect is recorded while it is in flight (its
/// port is taken when its SYN leaves, before anyone can accept it) and, once
/// established, by its local address. A suspect is ours if it matches an
/// established one, or one in flight whose local address matches; an
/// outbound connect that completes after its own accept was recorded is
/// caught on that side. Both sides look under one lock, in whatever order
/// the workers reap them, so the loop is cut at the hop after the one that
/// armed the guard.
final class LoopGuard: Sendable {
    /// A TCP connection as its source and its destination before NAT.
    struct Connection: Hashable, Sendable {
        let source: HostAddress
        let sourcePort: UInt16
        let destination: Target

        init(source: SocketAddress, destination: SocketAddress) {
            self.source = HostAddress(source)
            sourcePort = source.port
            self.destination = Target(destination)
        }
    }

    /// Where a connection is addressed, as connect(2) reads it.
    struct Target: Hashable, Sendable {
        let address: HostAddress
        let port: UInt16

        init(_ address: SocketAddress) {
            self.address = HostAddress(address).connectDestination
            port = address.port
        }
    }

    private struct State {
        var outbound: Set<Connection> = []
        var suspects: Set<Connection> = []
        /// Outbound connects in flight: descriptor and target.
        var connecting: [Int32: Target] = [:]
    }

    /// Main's and the mirrors' addresses: those of the start, and of every
    /// reload since (`learn`): a removed mirror's live copies still connect
    /// nowhere new, but an added one's connections can loop like the others.
    private let targets: Mutex<Set<Target>>
    private let localAddresses: Set<HostAddress>
    private let state = Mutex(State())
    private let armed = Atomic<Bool>(false)

    /// - Parameters:
    ///   - targets: main's and the mirrors' addresses, as the proxy connects to them.
    ///   - localAddresses: this host's addresses; loopback is always local.
    init(targets: [SocketAddress], localAddresses: Set<HostAddress>) {
        self.targets = Mutex(Set(targets.map(Target.init)))
        self.localAddresses = localAddresses
    }

    /// A reload's targets, from now on (the old ones stay: sessions that
    /// began before it may still connect to them).
    func learn(_ addresses: [SocketAddress]) {
        targets.withLock { $0.formUnion(addresses.map(Target.init)) }
    }

    /// Whether outbound connections are being recorded (a suspect was seen).
    var isArmed: Bool { armed.load(ordering: .relaxed) }

    /// Whether a client connects from this host (only those can be ours).
    func isLocal(_ peer: SocketAddress) -> Bool {
        let address = HostAddress(peer)
        return address.isLoopback || localAddresses.contains(address)
    }

    /// An accepted connection from this host worth recording: one addressed
    /// to one of our targets. Nil for every other client.
    func suspect(source: SocketAddress, destination: SocketAddress) -> Connection? {
        let connection = Connection(source: source, destination: destination)
        guard isLocal(source), targets.withLock({ $0.contains(connection.destination) }) else { return nil }
        return connection
    }

    /// Records an accepted suspect; true if it is one of our own outbound
    /// connections (a loop: refuse it). `localAddress` reads the local
    /// address of a descriptor whose connect is in flight.
    func accepted(_ suspect: Connection, localAddress: (Int32) -> SocketAddress?) -> Bool {
        armed.store(true, ordering: .relaxed)
        return state.withLock { state in
            if state.outbound.contains(suspect) { return true }
            for (fd, target) in state.connecting where target == suspect.destination {
                if let local = localAddress(fd), HostAddress(local) == suspect.source, local.port == suspect.sourcePort {
                    return true
                }
            }
            state.suspects.insert(suspect)
            return false
        }
    }

    /// An outbound connect on `fd` was submitted (only while armed).
    func connecting(fd: Int32, to target: SocketAddress) {
        state.withLock { $0.connecting[fd] = Target(target) }
    }

    /// An outbound connect ended: `fd` was recorded as in flight (or not),
    /// and `established` is the connection it made, when armed. True if its
    /// own accept was already recorded (a loop: fail it).
    func connected(fd: Int32?, established: Connection?) -> Bool {
        state.withLock { state in
            if let fd { state.connecting[fd] = nil }
            guard let established else { return false }
            if state.suspects.contains(established) { return true }
            state.outbound.insert(established)
            return false
        }
    }

    /// A recorded connection was closed.
    func closed(_ connection: Connection, outbound: Bool) {
        state.withLock { state in
            if outbound {
                _ = state.outbound.remove(connection)
            } else {
                _ = state.suspects.remove(connection)
            }
        }
    }

    /// Connections recorded now (for tests).
    var recordedCount: Int { state.withLock { $0.outbound.count + $0.suspects.count + $0.connecting.count } }
}
