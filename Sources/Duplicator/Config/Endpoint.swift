import Glibc
import Platform

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
        let parsed: HostPort
        do {
            parsed = try HostPort(parsing: text)
        } catch {
            let problem = switch error {
            case .empty, .noColon: "expected host:port, :port or [ipv6]:port"
            case .unclosedBracket: "missing ']' after an IPv6 address"
            case .noPortAfterBracket: "expected ':port' after ']'"
            case .emptyBracketedHost: "empty IPv6 address"
            case .unbracketedIPv6: "write an IPv6 address in brackets, like [::1]:8080"
            case .emptyPort, .invalidPort: "port must be a number from 1 to 65535"
            }
            throw ConfigError("address '\(text)': \(problem)")
        }
        guard parsed.port > 0 || role == .listen else {
            throw ConfigError("address '\(text)': port must be a number from 1 to 65535")
        }
        host = parsed.host
        port = parsed.port
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
            if let address = current.pointee.ai_addr, let copy = SocketAddress(copying: address, length: current.pointee.ai_addrlen) {
                addresses.append(copy)
            }
            entry = current.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw ConfigError("cannot resolve '\(name)' in '\(text)': no IPv4 or IPv6 address") }
        return addresses
    }
}

/// A configuration the proxy cannot run with: one line for the user.
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
