import Foundation
import Glibc
import Testing
import TestSupport
@testable import Duplicator
import LoadTools

/// `--dump-dir` over loopback and real io_uring: a mirror that flips a byte
/// gets a pcapng file per session, up to `--dump-max-files`, mode 0600, that
/// tshark reads as two TCP conversations (client with main, client with the
/// mirror) carrying the request and each server's reply; an identical
/// mirror gets none.
@Suite("Compare: pcapng dumps read back by tshark", .timeLimit(.minutes(6)),
       .enabled(if: Peers.runnable("tshark"), "needs tshark"))
struct DumpIntegrationTests {
    /// The payload bytes each direction carried: (source port, destination port) -> bytes.
    static func payloads(_ tshark: String, _ file: String) throws -> [String: [UInt8]] {
        let result = try runProgram(tshark, ["-r", file, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.payload"])
        #expect(result.status == 0, "\(result.standardError)")
        var streams: [String: [UInt8]] = [:]
        for line in result.standardOutput.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let hex = Array(fields[2].filter { $0 != ":" }.utf8)
            var bytes: [UInt8] = []
            var index = 0
            while index + 1 < hex.count {
                bytes.append(UInt8(String(decoding: hex[index...(index + 1)], as: UTF8.self), radix: 16)!)
                index += 2
            }
            streams["\(fields[0])>\(fields[1])", default: []] += bytes
        }
        return streams
    }

    @Test("a diverging mirror's sessions are dumped (up to the limit), read back by tshark; a matching one's are not", arguments: Config.Backend.tested)
    func dumpsReadBackByTshark(backend: Config.Backend) throws {
        let tshark = try Peers.require("tshark")
        var template = Array("/tmp/dump-integration-XXXXXX".utf8CString)
        let directory = String(cString: try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }))
        defer {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] { unlink(directory + "/" + name) }
            rmdir(directory)
        }
        let main = try startServer(.echo)
        defer { main.stop() }
        let identical = try VariantEchoServer(.identical)
        let flipping = try VariantEchoServer(.flipByte(at: 10))
        defer { identical.stop(); flipping.stop() }
        let proxy = try startProxy(backend: backend, main: main.boundPort, mirrors: [identical.port, flipping.port]) {
            $0.compare = true
            $0.dumpDirectory = directory
            $0.dumpMaxFiles = 3
            $0.mirrorLingerMs = 5_000
        }
        var stopped = false
        defer { if !stopped { proxy.shutdown() } }
        let sessions = 5
        var sent: [[UInt8]] = []
        for index in 0..<sessions {
            let payload = Array("session \(index) asks for something long enough: \(String(repeating: "x", count: 100 + index))\n".utf8)
            sent.append(payload)
            let connection = try TestConnection(port: proxy.port)
            let (received, end) = connection.exchange(payload, seed: UInt64(index))
            #expect(end == .eof && received == payload, "session \(index)")
        }
        #expect(eventually { proxy.activeSessions == 0 })
        proxy.shutdown()  // the writer writes what it was handed, then ends
        stopped = true
        let snapshot = proxy.snapshot()
        #expect(snapshot.mirrors[1].compared(.diverged) == UInt64(sessions))
        #expect(snapshot.mirrors[1].dumps == [3, UInt64(sessions - 3), 0, 0], "written, skipped_limit, dropped_queue, failed")
        #expect(snapshot.mirrors[0].dumps == [0, 0, 0, 0])
        let metrics = PrometheusText.render(snapshot)
        #expect(metrics.contains("duplicator_mirror_dumps_total{mirror=\"127.0.0.1:\(flipping.port)\",result=\"skipped_limit\"} 2"))

        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".pcapng") }.sorted()
        #expect(files.count == 3, "\(files)")
        var seen: Set<[UInt8]> = []
        for name in files {
            let path = directory + "/" + name
            #expect(name.contains("diverged"))
            var status = stat()
            #expect(stat(path, &status) == 0 && status.st_mode & 0o777 == 0o600, "\(name) mode")

            let conversations = try runProgram(tshark, ["-r", path, "-q", "-z", "conv,tcp"])
            #expect(conversations.status == 0, "\(conversations.standardError)")
            let rows = conversations.standardOutput.split(separator: "\n").filter { $0.contains("<->") }
            #expect(rows.count == 2, "\(conversations.standardOutput)")
            #expect(rows.contains { $0.contains("127.0.0.1:\(main.boundPort) ") }, "\(conversations.standardOutput)")
            #expect(rows.contains { $0.contains("127.0.0.1:\(flipping.port) ") }, "\(conversations.standardOutput)")

            let streams = try Self.payloads(tshark, path)
            // The client's port is its real one, the same in both conversations.
            let clientToMain = try #require(streams.first { $0.key.hasSuffix(">\(main.boundPort)") })
            let clientPort = clientToMain.key.split(separator: ">")[0]
            let request = clientToMain.value
            #expect(sent.contains(request), "the client's bytes")
            seen.insert(request)
            var flipped = request
            flipped[10] ^= 0x01
            #expect(streams["\(main.boundPort)>\(clientPort)"] == request, "main's reply")
            #expect(streams["\(clientPort)>\(flipping.port)"] == request, "the client's bytes to the mirror")
            #expect(streams["\(flipping.port)>\(clientPort)"] == flipped, "the mirror's reply")

            // tshark finds nothing wrong with the TCP it reads (no bad checksums, lost segments or retransmissions).
            let expert = try runProgram(tshark, ["-r", path, "-o", "tcp.check_checksum:TRUE", "-Y", "_ws.expert.severity >= warning"])
            #expect(expert.status == 0 && expert.standardOutput.isEmpty, "\(expert.standardError) \(expert.standardOutput)")
        }
        #expect(seen.count == 3, "three different sessions")
    }
}
