import Glibc

/// A TCP address as a user writes it: `host:port`, `:port`, `[v6]:port`.
/// `:port` means every interface for a listener and this host for a
/// peer, as goduplicator reads it. Host names are resolved once, at start.
public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
    public enum Role: Sendable { case listen, connect }

    /// As written by the user (used in logs and metric labels).
    public let text: String
    public let host: String?
    public let port: UInt16

    /// Parses without resolving. Port 0 is allowed for a listener (any free port).
    public init(parsing text: String, role: Role) throws(ConfigError) {
        self.text = text
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw ConfigError("address '\(text)': missing ']' after an IPv6 address")
            }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ConfigError("address '\(text)': expected ':port' after ']'") }
            portPart = rest.dropFirst()
            guard !hostPart.isEmpty else { throw ConfigError("address '\(text)': empty IPv6 address") }
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw ConfigError("address '\(text)': expected host:port, :port or [ipv6]:port")
            }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.contains(":") {
                throw ConfigError("address '\(text)': write an IPv6 address in brackets, like [::1]:8080")
            }
        }
        guard !portPart.isEmpty, portPart.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(portPart),
              port <= 65535, port > 0 || role == .listen else {
            throw ConfigError("address '\(text)': port must be a number from 1 to 65535")
        }
        self.host = hostPart.isEmpty ? nil : String(hostPart)
        self.port = UInt16(port)
    }

    public var description: String { text }

    /// The first address `getaddrinfo` gives for this endpoint.
    public func resolve(role: Role) throws(ConfigError) -> SocketAddress {
        try resolveAll(role: role)[0]
    }

    /// Every address `getaddrinfo` gives, in its order (never empty): the
    /// first is the one used, the others let the start-up checks see that
    /// `localhost` and `127.0.0.1` name one server.
    public func resolveAll(role: Role) throws(ConfigError) -> [SocketAddress] {
        let name = host ?? (role == .listen ? "0.0.0.0" : "127.0.0.1")
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | (role == .listen ? AI_PASSIVE : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(name, String(port), &hints, &list)
        guard status == 0, let first = list else {
            let reason = status == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(status))
            throw ConfigError("cannot resolve '\(name)' in '\(text)': \(reason)")
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            addresses.append(SocketAddress(current.pointee.ai_addr, length: current.pointee.ai_addrlen))
            entry = current.pointee.ai_next
        }
        return addresses
    }
}

/// A resolved socket address (IPv4 or IPv6), stored inline.
public struct SocketAddress: Sendable, CustomStringConvertible {
    public var storage = sockaddr_storage()
    public var length: socklen_t

    public init(_ address: UnsafePointer<sockaddr>, length: socklen_t) {
        self.length = length
        withUnsafeMutableBytes(of: &storage) { raw in
            raw.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length)))
        }
    }

    public var family: Int32 { Int32(storage.ss_family) }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                return UInt16(bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \.sin6_port)!, as: UInt16.self))
            }
            return UInt16(bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_port)!, as: UInt16.self))
        }
    }

    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        return withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                var address = raw.load(fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!, as: in6_addr.self)
                inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
                return "[\(Self.string(text))]:\(port)"
            }
            var address = raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: in_addr.self)
            inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            return "\(Self.string(text)):\(port)"
        }
    }

    private static func string(_ text: [CChar]) -> String {
        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Calls `body` with the address as a `sockaddr` pointer.
    public func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}

/// A configuration the proxy cannot run with: one line for the user.
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
