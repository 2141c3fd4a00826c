import Glibc

/// A resolved IPv4 or IPv6 socket address (a sockaddr_storage and its
/// length), stored inline: the proxy's targets and the load tools' peers.
public struct SocketAddress: Sendable, CustomStringConvertible {
    public var storage: sockaddr_storage
    public var length: socklen_t

    public init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// A copy of what the kernel or getaddrinfo returned; nil if it is
    /// longer than any socket address.
    public init?(copying address: UnsafePointer<sockaddr>, length: socklen_t) {
        guard Int(length) <= MemoryLayout<sockaddr_storage>.size else { return nil }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { target in
            target.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length)))
        }
        self.init(storage: storage, length: length)
    }

    /// An IPv4 or IPv6 literal ("127.0.0.1", "::1"), without any name lookup.
    public init?(numericHost host: String, port: UInt16) {
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        // Each address is built as its own type, then its bytes are copied
        // into the storage (the storage's memory is never used as another type).
        let parsed: Bool
        if host.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            parsed = inet_pton(AF_INET6, host, &address.sin6_addr) == 1
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in6.self) }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            parsed = inet_pton(AF_INET, host, &address.sin_addr) == 1
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in.self) }
        }
        guard parsed else { return nil }
        self.init(storage: storage, length: length)
    }

    /// The local address a socket is bound to (getsockname).
    public init(boundTo fd: Int32) throws(SystemCallError) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { throw .lastError("getsockname") }
        self.init(storage: storage, length: length)
    }

    /// AF_INET or AF_INET6.
    public var family: Int32 { Int32(storage.ss_family) }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { bytes in
            if family == AF_INET6 {
                return UInt16(bigEndian: bytes.load(as: sockaddr_in6.self).sin6_port)
            }
            return UInt16(bigEndian: bytes.load(as: sockaddr_in.self).sin_port)
        }
    }

    /// The numeric host: "127.0.0.1" or "::1".
    public var host: String {
        withUnsafeBytes(of: storage) { bytes in
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            if family == AF_INET6 {
                var address = bytes.load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            } else {
                var address = bytes.load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// "127.0.0.1:8080" or "[::1]:8080".
    public var description: String {
        family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The same address with 0.0.0.0 / :: replaced by 127.0.0.1 / ::1, for connecting
    /// to a socket that listens on all interfaces.
    public var replacingWildcardWithLoopback: SocketAddress {
        switch host {
        case "0.0.0.0": SocketAddress(numericHost: "127.0.0.1", port: port) ?? self
        case "::": SocketAddress(numericHost: "::1", port: port) ?? self
        default: self
        }
    }

    /// Calls `body` with the address as a `sockaddr` pointer.
    public func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        withUnsafePointer(to: storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}
