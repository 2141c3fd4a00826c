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
            + "handshake timeout \(DurationParser.text(nanoseconds: Int64(handshakeTimeoutMs) * 1_000_000)); "
            + "main and mirrors get the plaintext"
    }
}
