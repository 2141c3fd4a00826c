import ArgumentParser
import Duplicator

/// `--tls-cert` and its companions: TLS termination of the clients' connections (docs/tls.md).
struct TLSOptions: ParsableArguments {
    @Option(name: .customLong("tls-cert"), help: ArgumentHelp("Terminate TLS from clients with this PEM certificate (a chain: leaf first); main and every mirror get the plaintext. Needs --tls-key. See docs/tls.md.", valueName: "file"))
    var certificate: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("The PEM private key of --tls-cert.", valueName: "file"))
    var key: String?

    @Option(name: .customLong("tls-alpn"), help: ArgumentHelp("With --tls-cert, the ALPN protocols offered to clients, in order of preference (e.g. h2,http/1.1); none by default.", valueName: "list"))
    var alpn: String?

    @Option(name: .customLong("tls-handshake-timeout"), parsing: .unconditional, help: "With --tls-cert, a client whose TLS handshake is not done by then is closed, counted as cause=\"tls_handshake\".")
    var handshakeTimeout: String = DurationParser.text(milliseconds: Defaults.tlsHandshakeTimeoutMs)

    /// The settings, the files read and checked; nil without --tls-cert.
    func settings() throws(ConfigError) -> TLSSettings? {
        guard let certificate else {
            if key != nil { throw ConfigError("--tls-key needs --tls-cert") }
            if alpn != nil { throw ConfigError("--tls-alpn needs --tls-cert") }
            return nil
        }
        guard let key else { throw ConfigError("--tls-cert needs --tls-key (the certificate's private key)") }
        if handshakeTimeout.hasPrefix("-") {
            throw ConfigError("--tls-handshake-timeout '\(handshakeTimeout)': negative durations are refused")
        }
        let timeoutMs = try DurationParser.milliseconds(handshakeTimeout)
        let protocols = (alpn ?? "").split(separator: ",").map { String($0) }
        do {
            return try TLSSettings(certificatePath: certificate, keyPath: key, alpn: protocols, handshakeTimeoutMs: timeoutMs)
        } catch {
            throw ConfigError(error.description)
        }
    }
}
