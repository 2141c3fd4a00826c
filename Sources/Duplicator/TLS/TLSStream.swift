import COpenSSL
import Glibc

/// Why a TLS stream failed.
public enum TLSFailure: Error, Equatable, Sendable, CustomStringConvertible {
    /// The handshake failed: not TLS, a version or cipher in common with
    /// none of ours, a bad certificate (`reason` says which).
    case handshake(reason: String)
    /// After the handshake: a record that does not decrypt, an alert, a protocol error.
    case protocolError(reason: String)

    public var description: String {
        switch self {
        case .handshake(let reason): "TLS handshake failed: \(reason)"
        case .protocolError(let reason): "TLS error: \(reason)"
        }
    }
}

/// One TLS connection without IO (sans-IO): the caller feeds it the
/// ciphertext that arrived (`feed`), takes the plaintext out (`read`),
/// hands it plaintext to send (`write`) and takes the ciphertext that must
/// go to the peer (`takeCiphertext`), after every step, whatever it was.
/// Two OpenSSL memory BIOs stand in for the socket, so the ring (or the
/// epoll backend) does every receive and send and nothing here can block.
public final class TLSStream {
    /// Where the handshake is.
    public enum HandshakeState: Equatable, Sendable {
        case inProgress
        case established
        case failed(TLSFailure)
    }

    /// What a `read` found.
    public enum ReadOutcome: Equatable {
        /// Plaintext bytes written at the start of the buffer (> 0).
        case bytes(Int)
        /// No whole record: feed more ciphertext.
        case needsMore
        /// The peer's close_notify: the end of its stream.
        case closed
        case failed(TLSFailure)
    }

    private let ssl: OpaquePointer
    /// Ciphertext in (from the peer), ciphertext out (to the peer); owned by `ssl`.
    private let incoming: OpaquePointer
    private let outgoing: OpaquePointer
    public private(set) var state = HandshakeState.inProgress

    /// - Parameter serverName: for a client, the name to send (SNI) and
    ///   check the certificate against, instead of the context's.
    public init(context: TLSContext, serverName: String? = nil) {
        ssl = SSL_new(context.context)!
        incoming = BIO_new(BIO_s_mem())!
        outgoing = BIO_new(BIO_s_mem())!
        // Empty is "come back later", not the end of the stream.
        shim_bio_set_mem_eof_retry(incoming)
        shim_bio_set_mem_eof_retry(outgoing)
        SSL_set_bio(ssl, incoming, outgoing)
        switch context.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client:
            SSL_set_connect_state(ssl)
            if let name = serverName ?? context.serverName {
                if Self.isAddress(name) {
                    _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                } else {
                    _ = shim_ssl_set_host_name(ssl, name)
                    _ = SSL_set1_host(ssl, name)
                }
            }
        }
    }

    deinit { SSL_free(ssl) }

    static func isAddress(_ name: String) -> Bool {
        var storage = in6_addr()
        return inet_pton(AF_INET, name, &storage) == 1 || inet_pton(AF_INET6, name, &storage) == 1
    }

    /// Ciphertext that arrived from the peer (copied: the caller's memory is free again at return).
    public func feed(_ ciphertext: UnsafeRawBufferPointer) {
        guard let base = ciphertext.baseAddress, ciphertext.count > 0 else { return }
        var offset = 0
        while offset < ciphertext.count {
            // A memory BIO takes everything it is given (it grows).
            let written = BIO_write(incoming, base + offset, Int32(min(ciphertext.count - offset, Int(Int32.max))))
            guard written > 0 else { return }
            offset += Int(written)
        }
    }

    /// Advances the handshake with what was fed; a client starts it with
    /// no input (its ClientHello). Take the ciphertext after each call.
    @discardableResult
    public func handshake() -> HandshakeState {
        guard state == .inProgress else { return state }
        ERR_clear_error()
        let status = SSL_do_handshake(ssl)
        if status == 1 {
            state = .established
            return state
        }
        let error = SSL_get_error(ssl, status)
        if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return state }
        state = .failed(.handshake(reason: reason(error)))
        return state
    }

    /// Decrypted bytes into `buffer`, as many whole records as fit.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> ReadOutcome {
        guard let base = buffer.baseAddress else { return .needsMore }
        switch state {
        case .inProgress:
            // TLS 1.3 clients may send application data right after their
            // Finished, in the same flight: the handshake ends on the way.
            guard handshake() == .established else {
                if case .failed(let failure) = state { return .failed(failure) }
                return .needsMore
            }
        case .failed(let failure):
            return .failed(failure)
        case .established:
            break
        }
        var filled = 0
        while filled < buffer.count {
            ERR_clear_error()
            var count = 0
            let status = SSL_read_ex(ssl, base + filled, buffer.count - filled, &count)
            if status == 1 {
                filled += count
                continue
            }
            let error = SSL_get_error(ssl, 0)
            if filled > 0 { return .bytes(filled) }
            if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return .needsMore }
            if error == SSL_ERROR_ZERO_RETURN { return .closed }
            let failure = TLSFailure.protocolError(reason: reason(error))
            state = .failed(failure)
            return .failed(failure)
        }
        return .bytes(filled)
    }

    /// Plaintext to send: all of it is encrypted into the outgoing BIO at
    /// once (take it with `takeCiphertext`). False once the stream failed.
    public func write(_ plaintext: UnsafeRawBufferPointer) -> Bool {
        guard state == .established else { return false }
        guard let base = plaintext.baseAddress, plaintext.count > 0 else { return true }
        ERR_clear_error()
        var written = 0
        let status = SSL_write_ex(ssl, base, plaintext.count, &written)
        guard status == 1, written == plaintext.count else {
            state = .failed(.protocolError(reason: reason(SSL_get_error(ssl, status))))
            return false
        }
        return true
    }

    /// Our close_notify, into the outgoing BIO: the end of our stream.
    public func close() {
        guard state == .established else { return }
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// Ciphertext waiting to go to the peer.
    public var ciphertextBytesPending: Int { Int(shim_bio_pending(outgoing)) }

    /// Moves up to `buffer.count` bytes of waiting ciphertext into `buffer`; returns how many.
    public func takeCiphertext(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0, ciphertextBytesPending > 0 else { return 0 }
        let count = BIO_read(outgoing, base, Int32(min(buffer.count, Int(Int32.max))))
        return max(0, Int(count))
    }

    /// Whether `read` may find plaintext without more ciphertext: decrypted
    /// bytes left from a record, or ciphertext fed and not yet read.
    public var mayHavePlaintext: Bool { SSL_pending(ssl) > 0 || shim_bio_pending(incoming) > 0 }

    /// The protocol ALPN chose, if any.
    public var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// "TLSv1.2", "TLSv1.3".
    public var version: String { String(cString: SSL_get_version(ssl)) }

    private func reason(_ error: Int32) -> String {
        if error == SSL_ERROR_SSL {
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                ERR_clear_error()
                return "certificate verification: " + String(cString: X509_verify_cert_error_string(verify))
            }
            return TLSContext.lastErrorText()
        }
        if error == SSL_ERROR_SYSCALL { return "unexpected end of stream" }
        if error == SSL_ERROR_ZERO_RETURN { return "the peer closed" }
        return "OpenSSL error \(error)"
    }
}
