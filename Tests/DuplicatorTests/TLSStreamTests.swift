import COpenSSL
import Foundation
import Testing
@testable import Duplicator

/// The sans-IO TLS stream between two in-memory endpoints: full handshakes
/// in TLS 1.2 and 1.3, ALPN, data both ways, and the bad input a TLS port gets.
@Suite struct TLSStreamTests {
    let certificates: TestCertificates
    let server: TLSContext

    init() throws {
        certificates = try TestCertificates()
        server = try TLSContext.server(certificatePath: certificates.certificatePath, keyPath: certificates.keyPath,
                                       alpn: ["h2", "http/1.1"])
    }

    func client(maxVersion: Int32? = nil, alpn: [String] = []) throws -> TLSContext {
        let context = try TLSContext.client(caPath: certificates.certificatePath, serverName: "localhost", alpn: alpn)
        if let maxVersion { _ = shim_ssl_ctx_set_max_proto_version(context.context, maxVersion) }
        return context
    }

    @Test(arguments: [(shim_tls1_2_version, "TLSv1.2"), (shim_tls1_3_version, "TLSv1.3")])
    func handshakeAndDataBothWays(version: Int32, name: String) throws {
        let clientStream = TLSStream(context: try client(maxVersion: version))
        let serverStream = TLSStream(context: server)
        shuttle(clientStream, serverStream)
        #expect(clientStream.state == .established)
        #expect(serverStream.state == .established)
        #expect(serverStream.version == name)
        let request = Array((0..<40_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        #expect(request.withUnsafeBytes { clientStream.write($0) })
        shuttle(clientStream, serverStream)
        let received = serverStream.readAll()
        #expect(received.bytes == request)
        #expect(received.last == .needsMore)
        let reply = Array("pong".utf8)
        #expect(reply.withUnsafeBytes { serverStream.write($0) })
        shuttle(clientStream, serverStream)
        #expect(clientStream.readAll().bytes == reply)
        clientStream.close()
        shuttle(clientStream, serverStream)
        #expect(serverStream.readAll().last == .closed)
    }

    @Test func alpnPicksTheServersFirstInCommon() throws {
        let clientStream = TLSStream(context: try client(alpn: ["http/1.1", "h2"]))
        let serverStream = TLSStream(context: server)
        shuttle(clientStream, serverStream)
        #expect(serverStream.negotiatedProtocol == "h2")
        #expect(clientStream.negotiatedProtocol == "h2")
    }

    @Test func alpnWithNothingInCommonIsNoProtocolNotAFailure() throws {
        let clientStream = TLSStream(context: try client(alpn: ["imap"]))
        let serverStream = TLSStream(context: server)
        shuttle(clientStream, serverStream)
        #expect(serverStream.state == .established)
        #expect(serverStream.negotiatedProtocol == nil)
    }

    @Test func plaintextGarbageFailsTheHandshake() throws {
        let serverStream = TLSStream(context: server)
        let request = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        request.withUnsafeBytes { serverStream.feed($0) }
        guard case .failed(.handshake) = serverStream.handshake() else {
            Issue.record("plaintext did not fail the handshake: \(serverStream.state)")
            return
        }
        var buffer = [UInt8](repeating: 0, count: 100)
        guard case .failed = buffer.withUnsafeMutableBytes({ serverStream.read(into: $0) }) else {
            Issue.record("a failed stream read bytes")
            return
        }
    }

    @Test func badClientHelloFailsTheHandshake() throws {
        // A handshake record whose ClientHello claims a length it does not have and an impossible version.
        let serverStream = TLSStream(context: server)
        let hello: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x09, 0x09, 0x00, 0x00]
        hello.withUnsafeBytes { serverStream.feed($0) }
        guard case .failed(.handshake) = serverStream.handshake() else {
            Issue.record("a bad ClientHello did not fail the handshake: \(serverStream.state)")
            return
        }
    }

    @Test func truncatedClientHelloWaitsForMore() throws {
        let clientStream = TLSStream(context: try client())
        clientStream.handshake()
        var hello = [UInt8](repeating: 0, count: clientStream.ciphertextBytesPending)
        _ = hello.withUnsafeMutableBytes { clientStream.takeCiphertext(into: $0) }
        let serverStream = TLSStream(context: server)
        hello[0..<(hello.count / 2)].withUnsafeBytes { serverStream.feed($0) }
        #expect(serverStream.handshake() == .inProgress)
        #expect(serverStream.ciphertextBytesPending == 0)
    }

    @Test func garbageAfterTheHandshakeFailsTheRead() throws {
        let clientStream = TLSStream(context: try client())
        let serverStream = TLSStream(context: server)
        shuttle(clientStream, serverStream)
        #expect(serverStream.state == .established)
        // An application-data record that does not decrypt.
        let garbage: [UInt8] = [0x17, 0x03, 0x03, 0x00, 0x20] + [UInt8](repeating: 0xab, count: 32)
        garbage.withUnsafeBytes { serverStream.feed($0) }
        let outcome = serverStream.readAll().last
        guard case .failed(.protocolError) = outcome else {
            Issue.record("garbage after the handshake was read as \(outcome)")
            return
        }
    }

    @Test func wrongCertificateAuthorityFailsTheClientsHandshake() throws {
        let other = try certificates.another("other")
        let clientStream = TLSStream(context: try TLSContext.client(caPath: other.certificatePath, serverName: "localhost"))
        let serverStream = TLSStream(context: server)
        shuttle(clientStream, serverStream)
        guard case .failed(.handshake(let reason)) = clientStream.state else {
            Issue.record("a certificate of another CA was accepted: \(clientStream.state)")
            return
        }
        #expect(reason.contains("certificate"))
    }

    @Test func wrongServerNameFailsTheClientsHandshake() throws {
        let context = try TLSContext.client(caPath: certificates.certificatePath, serverName: "example.org")
        let clientStream = TLSStream(context: context)
        shuttle(clientStream, TLSStream(context: server))
        guard case .failed = clientStream.state else {
            Issue.record("a certificate for another name was accepted")
            return
        }
    }

    @Test func unreadableOrMismatchedFilesAreOneLine() throws {
        let other = try certificates.another("other")
        #expect(throws: TLSConfigurationError.self) {
            try TLSContext.server(certificatePath: certificates.folder + "/missing.crt", keyPath: certificates.keyPath)
        }
        do {
            _ = try TLSContext.server(certificatePath: certificates.certificatePath, keyPath: other.keyPath)
            Issue.record("a key of another certificate was accepted")
        } catch {
            #expect(error.description.contains("does not match"))
            #expect(!error.description.contains("\n"))
        }
        do {
            _ = try TLSContext.server(certificatePath: certificates.keyPath, keyPath: certificates.keyPath)
            Issue.record("a key was accepted as a certificate")
        } catch {
            #expect(error.description.contains("--tls-cert"))
        }
    }
}
