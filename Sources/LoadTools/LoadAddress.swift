import Glibc
import Platform

/// What an address will be used for; it decides what ":port" means.
public enum LoadAddressUse: Sendable {
    /// ":port" means all IPv4 interfaces (0.0.0.0).
    case listen
    /// ":port" means this machine (127.0.0.1).
    case connect
}

/// A parsed "host:port", ":port" or "[v6]:port", resolved on demand with getaddrinfo.
public struct LoadAddress: Sendable, Hashable, CustomStringConvertible {
    /// nil for ":port".
    public let host: String?
    public let port: UInt16

    public init(host: String?, port: UInt16) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(LoadAddressError) {
        do {
            let parsed = try HostPort(parsing: text)
            self.init(host: parsed.host, port: parsed.port)
        } catch {
            switch error {
            case .empty: throw .empty
            case .unclosedBracket: throw .unclosedBracket(text)
            case .noPortAfterBracket, .noColon, .emptyPort: throw .missingPort(text)
            case .emptyBracketedHost: throw .emptyBracketedHost(text)
            case .unbracketedIPv6: throw .unbracketedIPv6(text)
            case .invalidPort(let port): throw .invalidPort(port, in: text)
            }
        }
    }

    /// As it would be written on a command line.
    public var description: String {
        guard let host else { return ":\(port)" }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The socket address to bind or connect to. A name with both IPv4 and IPv6
    /// addresses resolves to its IPv4 one, because ":port" listens on IPv4 and
    /// "localhost" must reach it whatever order getaddrinfo prefers.
    public func resolve(for use: LoadAddressUse) throws(LoadAddressError) -> SocketAddress {
        if use == .connect, port == 0 { throw .portZeroForConnect(description) }
        guard let host else {
            return SocketAddress(numericHost: use == .listen ? "0.0.0.0" : "127.0.0.1", port: port)!
        }
        if let numeric = SocketAddress(numericHost: host, port: port) { return numeric }
        if host.contains(":") { throw .unresolvable(host: host, reason: "not a valid IPv6 address") }

        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | (use == .listen ? AI_PASSIVE : 0)
        var results: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &results)
        guard status == 0, let first = results else {
            let reason = status == EAI_SYSTEM ? errorDescription(errno) : String(cString: gai_strerror(status))
            throw .unresolvable(host: host, reason: reason)
        }
        defer { freeaddrinfo(first) }

        var chosen: UnsafeMutablePointer<addrinfo>? = nil
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let current = candidate {
            let family = current.pointee.ai_family
            if family == AF_INET { chosen = current; break }
            if family == AF_INET6, chosen == nil { chosen = current }
            candidate = current.pointee.ai_next
        }
        guard let chosen, let sockaddrPointer = chosen.pointee.ai_addr,
              let address = SocketAddress(copying: sockaddrPointer, length: chosen.pointee.ai_addrlen)
        else { throw .unresolvable(host: host, reason: "no IPv4 or IPv6 address") }
        return address
    }
}

/// Why an address could not be parsed or resolved; each reads as one line.
public enum LoadAddressError: Error, Sendable, Equatable, CustomStringConvertible {
    case empty
    case missingPort(String)
    case invalidPort(String, in: String)
    case unbracketedIPv6(String)
    case unclosedBracket(String)
    case emptyBracketedHost(String)
    case portZeroForConnect(String)
    case unresolvable(host: String, reason: String)

    private static let forms = "expected host:port, :port or [ipv6]:port"

    public var description: String {
        switch self {
        case .empty:
            "empty address (\(Self.forms))"
        case .missingPort(let text):
            "missing port in '\(text)' (\(Self.forms))"
        case .invalidPort(let port, let text):
            "bad port '\(port)' in '\(text)' (expected a number from 0 to 65535)"
        case .unbracketedIPv6(let text):
            "IPv6 address '\(text)' needs brackets, as in '[::1]:8080'"
        case .unclosedBracket(let text):
            "missing ']' in '\(text)' (\(Self.forms))"
        case .emptyBracketedHost(let text):
            "empty host in brackets in '\(text)'"
        case .portZeroForConnect(let text):
            "cannot connect to port 0 ('\(text)')"
        case .unresolvable(let host, let reason):
            "cannot resolve host '\(host)': \(reason)"
        }
    }
}
