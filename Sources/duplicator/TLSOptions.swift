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

    @Flag(name: .customLong("forward-tls"), help: "Re-encrypt towards main: TLS to -f, its certificate verified against --forward-ca or the system's CA store, its name against --forward-server-name or -f's host.")
    var forwardTLS = false

    @Option(name: .customLong("forward-ca"), help: ArgumentHelp("With --forward-tls, the PEM CA certificates main's certificate must chain to (default: the system's store).", valueName: "file"))
    var forwardCA: String?

    @Option(name: .customLong("forward-server-name"), help: ArgumentHelp("With --forward-tls, the name sent to main (SNI) and checked in its certificate (default: -f's host).", valueName: "name"))
    var forwardServerName: String?

    @Flag(name: .customLong("mirror-tls"), help: "Encrypt towards every mirror too (off: a shadow environment usually takes plaintext), each mirror's certificate verified against --mirror-ca or the system's CA store and its host.")
    var mirrorTLS = false

    @Option(name: .customLong("mirror-ca"), help: ArgumentHelp("With --mirror-tls, the PEM CA certificates the mirrors' certificates must chain to (default: the system's store).", valueName: "file"))
    var mirrorCA: String?

    /// --forward-tls's and --mirror-tls's settings; nil when off.
    func upstream(main: Endpoint) throws(ConfigError) -> (main: UpstreamTLSSettings?, mirrors: UpstreamTLSSettings?) {
        if !forwardTLS && (forwardCA != nil || forwardServerName != nil) {
            throw ConfigError(forwardCA != nil ? "--forward-ca needs --forward-tls" : "--forward-server-name needs --forward-tls")
        }
        if !mirrorTLS && mirrorCA != nil { throw ConfigError("--mirror-ca needs --mirror-tls") }
        do {
            let name = forwardServerName ?? main.host.flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
            let mainSettings = forwardTLS ? try UpstreamTLSSettings(caPath: forwardCA, serverName: name) : nil
            let mirrorSettings = mirrorTLS ? try UpstreamTLSSettings(caPath: mirrorCA, serverName: nil, caFlag: "--mirror-ca") : nil
            return (mainSettings, mirrorSettings)
        } catch {
            throw ConfigError(error.description)
        }
    }

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
