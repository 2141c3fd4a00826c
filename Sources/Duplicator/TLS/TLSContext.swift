import COpenSSL
import Glibc

/// Why a certificate, key or CA file could not be used: one line for the
/// operator, at start (and in `--check`), or when a reload is refused.
public struct TLSConfigurationError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// One `SSL_CTX`: the certificate, key, versions, ciphers and ALPN list
/// that every TLS stream made from it shares. Made once at start (or at a
/// reload) and shared by the workers: OpenSSL makes a context safe to use
/// from several threads once it is no longer changed (`SSL_new` only
/// takes a reference).
public final class TLSContext: @unchecked Sendable {
    public enum Role: Sendable { case server, client }

    let context: OpaquePointer
    public let role: Role
    /// The ALPN protocols in wire format (length-prefixed), for the server's
    /// selection callback, after two bytes of the list's length (the
    /// callback is given one pointer); owned here, alive as long as `context`.
    private let alpnWire: UnsafeMutableBufferPointer<UInt8>?
    /// The server name a client stream sends (SNI) and checks the certificate against.
    public let serverName: String?

    /// TLS 1.2's modern AEAD suites with forward secrecy (Mozilla's
    /// "intermediate" list); TLS 1.3's defaults are all modern already.
    static let cipherListTLS12 = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        + "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        + "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

    private init(context: OpaquePointer, role: Role, alpn: [String], serverName: String?) {
        self.context = context
        self.role = role
        self.serverName = serverName
        let wire = Self.alpnWireFormat(alpn)
        if wire.isEmpty {
            alpnWire = nil
        } else {
            let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: wire.count + 2)
            _ = buffer.initialize(from: [UInt8(wire.count & 0xff), UInt8(wire.count >> 8)] + wire)
            alpnWire = buffer
        }
    }

    deinit {
        SSL_CTX_free(context)
        alpnWire?.deallocate()
    }

    /// A server context from PEM files: `certificatePath` may hold a chain
    /// (leaf first); the key must match the leaf.
    public static func server(certificatePath: String, keyPath: String, alpn: [String] = []) throws(TLSConfigurationError)
        -> TLSContext {
        try readable(certificatePath, what: "--tls-cert")
        try readable(keyPath, what: "--tls-key")
        let tls = try make(method: TLS_server_method(), role: .server, alpn: alpn, serverName: nil)
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(tls.context, certificatePath) == 1 else {
            throw TLSConfigurationError("--tls-cert \(certificatePath): not a PEM certificate (\(lastErrorText()))")
        }
        guard SSL_CTX_use_PrivateKey_file(tls.context, keyPath, shim_filetype_pem) == 1 else {
            // OpenSSL checks the key against the certificate as it loads it.
            let reason = lastErrorText()
            if reason.contains("mismatch") { throw mismatch(keyPath: keyPath, certificatePath: certificatePath) }
            throw TLSConfigurationError("--tls-key \(keyPath): not a PEM private key (\(reason))")
        }
        guard SSL_CTX_check_private_key(tls.context) == 1 else {
            throw mismatch(keyPath: keyPath, certificatePath: certificatePath)
        }
        // Clients resume with stateless tickets; no server-side cache to grow.
        _ = shim_ssl_ctx_set_session_cache_mode(tls.context, 0)
        if let wire = tls.alpnWire {
            SSL_CTX_set_alpn_select_cb(tls.context, selectProtocol, UnsafeMutableRawPointer(wire.baseAddress!))
        }
        return tls
    }

    /// A client context (towards main or a mirror): the peer's certificate
    /// is verified against `caPath` (PEM), or the system's store when nil,
    /// and its name against `serverName`.
    public static func client(caPath: String?, serverName: String?, alpn: [String] = [], caFlag: String = "--forward-ca")
        throws(TLSConfigurationError) -> TLSContext {
        if let caPath { try readable(caPath, what: caFlag) }
        let tls = try make(method: TLS_client_method(), role: .client, alpn: alpn, serverName: serverName)
        ERR_clear_error()
        if let caPath {
            guard SSL_CTX_load_verify_locations(tls.context, caPath, nil) == 1 else {
                throw TLSConfigurationError("\(caFlag) \(caPath): no PEM certificate in it (\(lastErrorText()))")
            }
        } else {
            guard SSL_CTX_set_default_verify_paths(tls.context) == 1 else {
                throw TLSConfigurationError("the system's CA store could not be read (\(lastErrorText()))")
            }
        }
        SSL_CTX_set_verify(tls.context, shim_verify_peer, nil)
        if let wire = tls.alpnWire {
            _ = SSL_CTX_set_alpn_protos(tls.context, wire.baseAddress! + 2, UInt32(wire.count - 2))
        }
        return tls
    }

    private static func make(method: OpaquePointer?, role: Role, alpn: [String], serverName: String?)
        throws(TLSConfigurationError) -> TLSContext {
        for name in alpn where name.utf8.isEmpty || name.utf8.count > 255 {
            throw TLSConfigurationError("--tls-alpn: '\(name)' is not a protocol name (1 to 255 bytes)")
        }
        guard alpnWireFormat(alpn).count < 65536 else { throw TLSConfigurationError("--tls-alpn: too many protocols") }
        guard let context = SSL_CTX_new(method) else {
            throw TLSConfigurationError("OpenSSL could not make a context (\(lastErrorText()))")
        }
        let tls = TLSContext(context: context, role: role, alpn: alpn, serverName: serverName)
        guard shim_ssl_ctx_set_min_proto_version(context, shim_tls1_2_version) == 1,
              SSL_CTX_set_cipher_list(context, cipherListTLS12) == 1 else {
            throw TLSConfigurationError("OpenSSL refused the versions or ciphers (\(lastErrorText()))")
        }
        // Renegotiation is an old DoS vector and nothing modern needs it; the
        // server's order of ciphers wins; and small buffers for idle streams.
        _ = SSL_CTX_set_options(context, UInt64(shim_op_no_renegotiation | shim_op_cipher_server_preference))
        _ = shim_ssl_ctx_set_mode(context, shim_mode_release_buffers)
        return tls
    }

    private static func mismatch(keyPath: String, certificatePath: String) -> TLSConfigurationError {
        ERR_clear_error()
        return TLSConfigurationError("--tls-key \(keyPath) does not match the certificate in --tls-cert \(certificatePath)")
    }

    /// A missing or unreadable file gets the system's reason, not OpenSSL's.
    private static func readable(_ path: String, what: String) throws(TLSConfigurationError) {
        guard access(path, R_OK) == 0 else {
            throw TLSConfigurationError("\(what) \(path): \(String(cString: strerror(errno)))")
        }
    }

    static func alpnWireFormat(_ names: [String]) -> [UInt8] {
        names.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
    }

    /// The newest OpenSSL error of this thread, as one line (and the queue emptied).
    static func lastErrorText() -> String {
        let code = ERR_peek_last_error()
        ERR_clear_error()
        guard code != 0 else { return "no reason given" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

/// The server's ALPN choice: the first of our protocols the client offers;
/// none in common is no ALPN at all (as nginx does), not a failed handshake.
private func selectProtocol(_ ssl: OpaquePointer?, _ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
                            _ outLength: UnsafeMutablePointer<UInt8>?, _ offered: UnsafePointer<UInt8>?,
                            _ offeredLength: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int32 {
    guard let argument, let offered else { return shim_tlsext_err_noack }
    let prefixed = argument.assumingMemoryBound(to: UInt8.self)
    let oursLength = Int(prefixed[0]) | Int(prefixed[1]) << 8
    let ours = prefixed + 2
    var chosen: UnsafeMutablePointer<UInt8>?
    var chosenLength: UInt8 = 0
    let status = SSL_select_next_proto(&chosen, &chosenLength, ours, UInt32(oursLength), offered, offeredLength)
    guard status == OPENSSL_NPN_NEGOTIATED, let chosen else { return shim_tlsext_err_noack }
    out?.pointee = UnsafePointer(chosen)
    outLength?.pointee = chosenLength
    return shim_tlsext_err_ok
}
