import Glibc

/// `--tls-cert`, `--tls-key`, `--tls-alpn`, `--tls-handshake-timeout`: what
/// the proxy terminates TLS from clients with, the files read and checked
/// once, at start or at a reload (a bad file is refused then, not at the
/// first client).
public struct TLSSettings: Sendable {
    public let certificatePath: String
    public let keyPath: String
    public let alpn: [String]
    public let handshakeTimeoutMs: Int
    /// The certificate and key loaded, shared by every worker.
    public let context: TLSContext
    /// What the two files held when read (a reload with the same paths
    /// applies a renewed certificate: `ConfigDiff` compares this).
    public let filesDigest: String

    public init(certificatePath: String, keyPath: String, alpn: [String] = [],
                handshakeTimeoutMs: Int = Defaults.tlsHandshakeTimeoutMs) throws(TLSConfigurationError) {
        guard (1...600_000).contains(handshakeTimeoutMs) else {
            throw TLSConfigurationError("--tls-handshake-timeout must be from 1ms to 10m, got \(handshakeTimeoutMs)ms")
        }
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.alpn = alpn
        self.handshakeTimeoutMs = handshakeTimeoutMs
        context = try TLSContext.server(certificatePath: certificatePath, keyPath: keyPath, alpn: alpn)
        filesDigest = Self.digest(certificatePath) + ":" + Self.digest(keyPath)
    }

    /// FNV-1a 64 of a file's bytes ("" if unreadable: the context was just made from it).
    static func digest(_ path: String) -> String {
        guard let file = fopen(path, "rb") else { return "" }
        defer { fclose(file) }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            for byte in buffer[0..<count] { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        return String(hash, radix: 16)
    }

    /// For `--check` and the log at start.
    public var summary: String {
        let alpnNote = alpn.isEmpty ? "no ALPN" : "ALPN \(alpn.joined(separator: ","))"
        return "TLS from clients: certificate \(certificatePath), TLS 1.2 and 1.3, \(alpnNote), "
            + "handshake timeout \(DurationParser.text(nanoseconds: Int64(handshakeTimeoutMs) * 1_000_000)), "
            + "handshakes on a thread of each worker's own at nice +\(HandshakeThread.niceIncrement); "
            + "main and mirrors get the plaintext"
    }
}

/// The TLS contexts of each kind of leg, as a worker's sessions use them; nil: that leg is plain.
public struct TLSContexts: Sendable {
    public var clients: TLSContext?
    public var main: TLSContext?
    public var mirrors: TLSContext?
    public var handshakeTimeoutMs: Int

    public init(clients: TLSContext? = nil, main: TLSContext? = nil, mirrors: TLSContext? = nil,
                handshakeTimeoutMs: Int = Defaults.tlsHandshakeTimeoutMs) {
        self.clients = clients
        self.main = main
        self.mirrors = mirrors
        self.handshakeTimeoutMs = handshakeTimeoutMs
    }

    public var isEmpty: Bool { clients == nil && main == nil && mirrors == nil }

    func context(for leg: Leg) -> TLSContext? {
        leg == .client ? clients : leg == .main ? main : mirrors
    }
}

/// `--forward-tls` (and `--mirror-tls`): TLS from the proxy to main (or the
/// mirrors), the peer's certificate verified against a CA file or the
/// system's store, and its name against the server name.
public struct UpstreamTLSSettings: Sendable {
    public let caPath: String?
    public let serverName: String?
    public let context: TLSContext
    /// What the CA file held when read, as `TLSSettings.filesDigest`.
    public let filesDigest: String

    public init(caPath: String?, serverName: String?, caFlag: String = "--forward-ca") throws(TLSConfigurationError) {
        self.caPath = caPath
        self.serverName = serverName
        context = try TLSContext.client(caPath: caPath, serverName: serverName, caFlag: caFlag)
        filesDigest = caPath.map { TLSSettings.digest($0) } ?? ""
    }
}

extension UpstreamTLSSettings {
    /// For `--check` and the log at start.
    public func summary(_ towards: String) -> String {
        "TLS to \(towards): verified against \(caPath ?? "the system's CA store")"
            + (serverName.map { ", name \($0)" } ?? ", each mirror's host as its name")
    }
}

extension Config {
    /// What a worker's sessions take their TLS from.
    public func tlsContexts() -> TLSContexts {
        TLSContexts(clients: tls?.context, main: forwardTLS?.context, mirrors: mirrorTLS?.context,
                    handshakeTimeoutMs: tls?.handshakeTimeoutMs ?? Defaults.tlsHandshakeTimeoutMs)
    }
}
