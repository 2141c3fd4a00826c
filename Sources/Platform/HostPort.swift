/// An address as a user writes it on a command line: `host:port`, `:port`
/// or `[v6]:port`, split without any lookup. What `:port` means, and which
/// ports are allowed, is for the caller: the proxy's `Endpoint` and the load
/// tools' `LoadAddress` read it each their own way, and word their errors.
public struct HostPort: Sendable, Equatable {
    /// nil for `:port`; an IPv6 address without its brackets.
    public let host: String?
    public let port: UInt16

    public enum ParseError: Error, Sendable, Equatable {
        case empty
        case unclosedBracket
        /// `[v6]` not followed by `:port`.
        case noPortAfterBracket
        case emptyBracketedHost
        /// No `:` at all.
        case noColon
        /// More than one `:` outside brackets.
        case unbracketedIPv6
        /// `host:` with nothing after the colon.
        case emptyPort
        /// Not a decimal number from 0 to 65535 (at most 5 digits).
        case invalidPort(String)
    }

    public init(parsing text: String) throws(ParseError) {
        guard !text.isEmpty else { throw .empty }
        let hostText: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .unclosedBracket }
            hostText = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .noPortAfterBracket }
            guard !hostText.isEmpty else { throw .emptyBracketedHost }
            portText = rest.dropFirst()
        } else {
            let colons = text.count { $0 == ":" }
            guard colons > 0 else { throw .noColon }
            guard colons == 1 else { throw .unbracketedIPv6 }
            let colon = text.firstIndex(of: ":")!
            hostText = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !portText.isEmpty else { throw .emptyPort }
        guard portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(portText) else {
            throw .invalidPort(String(portText))
        }
        host = hostText.isEmpty ? nil : String(hostText)
        self.port = port
    }
}
