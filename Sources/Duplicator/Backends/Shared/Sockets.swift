import Glibc
import Platform
import Ring

/// The few socket calls made outside the ring: creating sockets and
/// listeners, and their options. Errors carry errno and what was attempted.
enum Sockets {
    /// A close-on-exec TCP socket with TCP_NODELAY (a proxy must not add
    /// Nagle's delay to small replies), or a negated errno.
    ///
    /// Blocking for io_uring, like the accepted ones: io_uring polls for
    /// readiness by itself, but it honours O_NONBLOCK, and a connect that
    /// io_uring runs from its worker threads (as it may with a linked
    /// timeout) would then complete with -EINPROGRESS instead of the outcome
    /// (seen under load). Non-blocking for the epoll backend.
    static func openStream(family: Int32, nonBlocking: Bool = false) -> Int32 {
        let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = socket(family, flags, 0)
        guard fd >= 0 else { return -errno }
        setNoDelay(fd)
        return fd
    }

    static func setNoDelay(_ fd: Int32) {
        var on: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// TCP wakes a reader only once `bytes` are queued, or at EOF or an
    /// error (tcp_data_ready checks SO_RCVLOWAT before it wakes anyone): for
    /// the replies of a mirror, which are thrown away, one wakeup and one
    /// discard per batch instead of one per reply.
    static func setReceiveLowWater(_ fd: Int32, bytes: Int) {
        var value = Int32(clamping: bytes)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Closing resets the connection (SO_LINGER 0) and drops what it has
    /// not sent, instead of leaving it to an orphaned socket.
    static func setResetOnClose(_ fd: Int32) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }

    /// A listening socket bound to `address`. With `reusePort` (SO_REUSEPORT)
    /// each worker can have its own and the kernel spreads connections over
    /// them; without it, nobody else may listen on the port (the metrics
    /// endpoint has no reason to share its port).
    static func listen(on address: SocketAddress, queueLength: Int32, reusePort: Bool = false) throws(SystemCallError) -> Int32 {
        let fd = try bound(to: address, reusePort: reusePort)
        guard Glibc.listen(fd, queueLength) == 0 else {
            let error = errno
            close(fd)
            throw SystemCallError(operation: "listen on \(address)", errorNumber: error)
        }
        return fd
    }

    /// Fails with EADDRINUSE when any socket already listens on `address`,
    /// even one in a SO_REUSEPORT group that we could join: binds a socket
    /// without SO_REUSEPORT (SO_REUSEADDR only, which a listener never lets
    /// in), then closes it. Our own SO_REUSEPORT group binds afterwards, so
    /// another instance started later fails here too.
    static func probeUnshared(_ address: SocketAddress) throws(SystemCallError) {
        close(try bound(to: address, reusePort: false))
    }

    /// A socket bound to `address` that does not listen yet: a new member of
    /// a SO_REUSEPORT group joins it (and gets a share of the clients) only
    /// at listen(2), which its worker calls once it can accept.
    static func boundNotListening(to address: SocketAddress) throws(SystemCallError) -> Int32 {
        try bound(to: address, reusePort: true)
    }

    private static func bound(to address: SocketAddress, reusePort: Bool) throws(SystemCallError) -> Int32 {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(operation: "socket for \(address)", errorNumber: errno) }
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        if reusePort {
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        let result = address.withSockaddr { bind(fd, $0, $1) }
        guard result == 0 else {
            let error = errno
            close(fd)
            throw SystemCallError(operation: "bind to \(address)", errorNumber: error)
        }
        return fd
    }

    /// The address a socket is bound to (to learn the port chosen for port 0).
    static func localAddress(_ fd: Int32) -> SocketAddress? {
        address { getsockname(fd, $0, $1) }
    }

    /// The address of a connected socket's peer.
    static func peerAddress(_ fd: Int32) -> SocketAddress? {
        address { getpeername(fd, $0, $1) }
    }

    /// SO_ORIGINAL_DST (linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value).
    private static let originalDestinationOption: Int32 = 80

    /// Where an accepted connection was addressed before NAT redirected it
    /// here (conntrack's SO_ORIGINAL_DST), or its local address when no NAT
    /// applies or conntrack is not loaded.
    static func originalDestination(_ fd: Int32, family: Int32) -> SocketAddress? {
        let level = family == AF_INET6 ? Int32(IPPROTO_IPV6) : Int32(IPPROTO_IP)
        return address { getsockopt(fd, level, originalDestinationOption, $0, $1) } ?? localAddress(fd)
    }

    private static func address(_ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &length) }
        }
        guard result == 0, Int(length) <= MemoryLayout<sockaddr_storage>.size else { return nil }
        return SocketAddress(storage: storage, length: length)
    }
}

extension Sockets {
    /// Whom an accepted connection is from and the address it reached, as
    /// the PROXY protocol carries them; nil if either cannot be had.
    static func connectionAddresses(_ fd: Int32) -> ProxyAddresses? {
        guard let source = peerAddress(fd)?.proxyAddress, let destination = localAddress(fd)?.proxyAddress else { return nil }
        return ProxyAddresses(source: source, destination: destination)
    }
}

extension SocketAddress {
    /// A server's end of a conversation in a dump or a recording: this
    /// address, or its port alone for a family a capture cannot name.
    var serverAddress: ProxyAddress {
        proxyAddress ?? ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(start: nil, count: 0), port: port)
    }

    /// This address as the PROXY protocol carries it; nil for a family other than IPv4 and IPv6.
    var proxyAddress: ProxyAddress? {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                let offset = MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!
                return ProxyAddress(family: .ipv6, networkBytes: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 16)]), port: port)
            }
            if family == AF_INET {
                let offset = MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!
                return ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 4)]), port: port)
            }
            return nil
        }
    }
}
