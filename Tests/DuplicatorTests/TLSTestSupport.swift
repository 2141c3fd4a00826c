import Foundation
import Glibc
@testable import Duplicator

/// Certificates for the TLS tests, made at test time with `openssl req`
/// (ECDSA P-256, for localhost and 127.0.0.1) in a temporary folder that
/// goes away with this object.
final class TestCertificates {
    let folder: String
    let certificatePath: String
    let keyPath: String

    /// `name` tells two sets apart in one folder (a wrong CA, a mismatched key).
    init(name: String = "server") throws {
        folder = try makeTemporaryFolder("tls")
        certificatePath = folder + "/\(name).crt"
        keyPath = folder + "/\(name).key"
        try Self.generate(certificatePath: certificatePath, keyPath: keyPath)
    }

    deinit { try? FileManager.default.removeItem(atPath: folder) }

    /// Another certificate and key in the same folder (same subject, different key).
    func another(_ name: String) throws -> (certificatePath: String, keyPath: String) {
        let paths = (folder + "/\(name).crt", folder + "/\(name).key")
        try Self.generate(certificatePath: paths.0, keyPath: paths.1)
        return paths
    }

    static func generate(certificatePath: String, keyPath: String) throws {
        let openssl = try Peers.require("openssl")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: openssl)
        process.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                             "-keyout", keyPath, "-out", certificatePath, "-days", "2", "-subj", "/CN=localhost",
                             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("openssl req failed (\(process.terminationStatus))") }
    }
}

extension TestCertificates {
    /// The proxy's `--tls-cert` and `--tls-key` for this pair.
    func serverSettings(alpn: [String] = []) throws -> TLSSettings {
        try TLSSettings(certificatePath: certificatePath, keyPath: keyPath, alpn: alpn)
    }

    /// A client that trusts this certificate and checks the name localhost.
    func clientContext() throws -> TLSContext {
        try TLSContext.client(caPath: certificatePath, serverName: "localhost")
    }
}

func makeTemporaryFolder(_ prefix: String) throws -> String {
    var template = Array((NSTemporaryDirectory() + "/duplicator-\(prefix)-XXXXXX").utf8CString)
    guard let made = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
    return String(cString: made)
}

/// Two in-memory TLS endpoints: moves ciphertext between them until neither has any to give.
func shuttle(_ client: TLSStream, _ server: TLSStream, rounds: Int = 20) {
    for _ in 0..<rounds {
        var moved = false
        for (from, to) in [(client, server), (server, client)] {
            if from.state == .inProgress { from.handshake() }
            if from.ciphertextBytesPending > 0 {
                moveCiphertext(from, to)
                moved = true
            }
            if to.state == .inProgress { to.handshake() }
        }
        if !moved { return }
    }
}

/// All the ciphertext `from` has for its peer, fed to `to`.
func moveCiphertext(_ from: TLSStream, _ to: TLSStream) {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while from.ciphertextBytesPending > 0 {
        let count = buffer.withUnsafeMutableBytes { from.takeCiphertext(into: $0) }
        buffer.withUnsafeBytes { to.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }
}

extension TLSStream {
    /// All the plaintext `read` gives now.
    func readAll() -> (bytes: [UInt8], last: ReadOutcome) {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let outcome = buffer.withUnsafeMutableBytes { read(into: $0) }
            guard case .bytes(let count) = outcome else { return (result, outcome) }
            result += buffer[0..<count]
        }
    }
}
