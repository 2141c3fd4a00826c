import Glibc
import Platform

/// Operator mistakes refused before anything binds (promise 8): a target
/// that is our own listener (each connection would loop back into the
/// proxy until descriptors run out), a mirror that is main (every client
/// byte would reach production twice), the same mirror twice, and metrics
/// on the listen address. Pure: the addresses are resolved by the caller
/// and this host's addresses are passed in, so tests need no network.
///
/// Names are compared by every address they resolve to, not just the first
/// one the proxy connects to: `localhost` may give `::1` before `127.0.0.1`,
/// and `-f :8081 -m localhost:8081` is still main twice.
struct StartupChecks {
    /// An endpoint as written and every address it resolved to (the first
    /// is the one used).
    struct Resolved {
        let endpoint: Endpoint
        let addresses: [SocketAddress]
    }

    let listen: Endpoint
    let listenAddress: SocketAddress
    let main: Resolved
    let mirrors: [Resolved]
    let metrics: Resolved?
    /// This host's addresses (`localHostAddresses()`); loopback is always local.
    let localAddresses: Set<HostAddress>

    func check() throws(ConfigError) {
        if listenAddress.port != 0 {
            // Port 0: the kernel picks a free port, which no target can name.
            if reachesListener(main) {
                throw ConfigError("-f \(main.endpoint) is this proxy's own listen address (-l \(listen)): "
                    + "every connection would loop back into the proxy until it runs out of descriptors")
            }
            if let mirror = mirrors.first(where: reachesListener) {
                throw ConfigError("-m \(mirror.endpoint) is this proxy's own listen address (-l \(listen)): "
                    + "every client byte would loop back into the proxy until it runs out of descriptors")
            }
        }
        if let mirror = mirrors.first(where: { Self.sameServer($0, main) }) {
            throw ConfigError("-m \(mirror.endpoint) is the main server (-f \(main.endpoint)): "
                + "every client byte would reach main twice")
        }
        for (index, mirror) in mirrors.enumerated() {
            if let earlier = mirrors[..<index].first(where: { Self.sameServer($0, mirror) }) {
                let same = earlier.endpoint.text == mirror.endpoint.text ? "is given twice"
                    : "is the same mirror as -m \(earlier.endpoint)"
                throw ConfigError("-m \(mirror.endpoint) \(same): every client byte would reach it twice")
            }
        }
        if let metrics, let metricsAddress = metrics.addresses.first, metricsAddress.port != 0,
           metricsAddress.port == listenAddress.port,
           Self.listenersOverlap(HostAddress(metricsAddress), HostAddress(listenAddress)) {
            throw ConfigError("--metrics \(metrics.endpoint) is the listen address (-l \(listen)): "
                + "give the metrics a port of their own")
        }
        // Metrics on a target's address would take the port main or a
        // mirror is meant to answer on (if it is free at start, as when the
        // server is down): the proxy would then connect to its own metrics.
        if let metrics, let metricsAddress = metrics.addresses.first, metricsAddress.port != 0 {
            let served = Resolved(endpoint: metrics.endpoint, addresses: [metricsAddress])
            if reaches(served, main) {
                throw ConfigError("--metrics \(metrics.endpoint) is the main server's address (-f \(main.endpoint)): "
                    + "give the metrics a port of their own")
            }
            if let mirror = mirrors.first(where: { reaches(served, $0) }) {
                throw ConfigError("--metrics \(metrics.endpoint) is a mirror's address (-m \(mirror.endpoint)): "
                    + "give the metrics a port of their own")
            }
        }
    }

    /// A connection to one of `target`'s addresses would reach a listener on `listener`'s address.
    private func reaches(_ listener: Resolved, _ target: Resolved) -> Bool {
        guard let address = listener.addresses.first else { return false }
        let listenHost = HostAddress(address)
        return target.addresses.contains { targetAddress in
            guard targetAddress.port == address.port else { return false }
            let destination = HostAddress(targetAddress).connectDestination
            let isLocal = destination.isLoopback || localAddresses.contains(destination)
            switch listenHost {
            case .v4(0): return destination.isV4 && isLocal
            case .v6(0, 0): return isLocal
            default: return destination == listenHost.connectDestination
            }
        }
    }

    /// A connection to one of `target`'s addresses would be accepted by our listener.
    private func reachesListener(_ target: Resolved) -> Bool {
        let listenHost = HostAddress(listenAddress)
        return target.addresses.contains { address in
            guard address.port == listenAddress.port else { return false }
            let destination = HostAddress(address).connectDestination
            let isLocal = destination.isLoopback || localAddresses.contains(destination)
            switch listenHost {
            case .v4(0): return destination.isV4 && isLocal
            // An IPv6 wildcard listener takes IPv4 too: we leave IPV6_V6ONLY at its default, off.
            case .v6(0, 0): return isLocal
            default: return destination == listenHost
            }
        }
    }

    /// Two targets share an address and port (connecting to 0.0.0.0 is connecting to loopback).
    static func sameServer(_ first: Resolved, _ second: Resolved) -> Bool {
        first.addresses.contains { one in
            second.addresses.contains { other in
                one.port == other.port && HostAddress(one).connectDestination == HostAddress(other).connectDestination
            }
        }
    }

    /// Two listeners on one port would take each other's connections.
    static func listenersOverlap(_ first: HostAddress, _ second: HostAddress) -> Bool {
        if first == second || first == .v6(0, 0) || second == .v6(0, 0) { return true }
        if first == .v4(0) { return second.isV4 }
        if second == .v4(0) { return first.isV4 }
        return false
    }
}

/// An IP address without its port, IPv4-mapped IPv6 addresses as IPv4.
enum HostAddress: Hashable, Sendable {
    case v4(UInt32)
    case v6(UInt64, UInt64)

    init(_ address: SocketAddress) {
        self = withUnsafeBytes(of: address.storage) { raw in
            if address.family == AF_INET6 {
                let offset = MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!
                let bytes = Array(raw[offset..<(offset + 16)])
                if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
                    return .v4(bytes[12..<16].reduce(0) { $0 << 8 | UInt32($1) })
                }
                return .v6(bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
            }
            let offset = MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!
            return .v4(raw[offset..<(offset + 4)].reduce(0) { $0 << 8 | UInt32($1) })
        }
    }

    var isV4: Bool {
        if case .v4 = self { return true }
        return false
    }

    /// 127.0.0.0/8 and ::1.
    var isLoopback: Bool {
        switch self {
        case .v4(let value): return value >> 24 == 127
        case .v6(let high, let low): return high == 0 && low == 1
        }
    }

    /// Where a connect to this address goes: Linux sends one to 0.0.0.0 or
    /// :: to loopback.
    var connectDestination: HostAddress {
        switch self {
        case .v4(0): return .v4(0x7f00_0001)
        case .v6(0, 0): return .v6(0, 1)
        default: return self
        }
    }
}

/// The addresses of this host's interfaces (getifaddrs), loopback included.
func localHostAddresses() -> Set<HostAddress> {
    var result: Set<HostAddress> = [.v4(0x7f00_0001), .v6(0, 1)]
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0 else { return result }
    defer { freeifaddrs(list) }
    var entry = list
    while let current = entry {
        if let address = current.pointee.ifa_addr {
            let family = Int32(address.pointee.sa_family)
            if family == AF_INET || family == AF_INET6 {
                let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
                if let copy = SocketAddress(copying: address, length: length) { result.insert(HostAddress(copy)) }
            }
        }
        entry = current.pointee.ifa_next
    }
    return result
}
