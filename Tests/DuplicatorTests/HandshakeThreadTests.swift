import Foundation
import Glibc
import Testing
@testable import Duplicator

/// The handshake thread on its own: a server's steps run there, not on the
/// caller's thread, each result wakes the caller through the socket pair,
/// and the thread is niced below the workers (promise 11). Each wait is
/// bounded (5 s); the suite's limit is the socket suites' (docs/testing.md).
@Suite(.timeLimit(.minutes(6))) struct HandshakeThreadTests {
    let certificates: TestCertificates
    let server: TLSContext

    init() throws {
        certificates = try TestCertificates()
        server = try TLSContext.server(certificatePath: certificates.certificatePath, keyPath: certificates.keyPath)
    }

    /// Waits (5 s at most) for the wake datagram, reads it, and takes the results.
    func waitForResults(_ thread: HandshakeThread) -> [HandshakeThread.Result] {
        var results: [HandshakeThread.Result] = []
        var waited = 0
        while results.isEmpty && waited < 50 {
            var descriptor = pollfd(fd: thread.wakeFD, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 100) == 1 {
                var byte: UInt8 = 0
                while recv(thread.wakeFD, &byte, 1, Int32(MSG_DONTWAIT)) > 0 {}
            }
            thread.takeResults(into: &results)
            waited += 1
        }
        return results
    }

    @Test func serverStepsRunOnTheThreadAndWakeTheCaller() throws {
        let thread = try HandshakeThread(name: "tls handshakes")
        defer { thread.stop() }
        let client = TLSStream(context: try certificates.clientContext())
        let serverStream = TLSStream(context: server)
        #expect(client.handshake() == .inProgress)
        moveCiphertext(client, serverStream)
        var steps = 0
        // The server's steps only on the thread; the client's here.
        while serverStream.state == .inProgress && steps < 4 {
            thread.submit(HandshakeThread.Step(place: 7, generation: 3, stream: serverStream))
            let results = waitForResults(thread)
            try #require(results.count == 1)
            #expect(results[0].place == 7 && results[0].generation == 3)
            #expect(results[0].state == serverStream.state)
            steps += 1
            moveCiphertext(serverStream, client)
            client.handshake()
            moveCiphertext(client, serverStream)
        }
        #expect(serverStream.state == .established)
        #expect(client.state == .established)
        #expect(steps == 2)
    }

    @Test func aFailedStepComesBackWithItsReason() throws {
        let thread = try HandshakeThread(name: "tls handshakes")
        defer { thread.stop() }
        let serverStream = TLSStream(context: server)
        Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8).withUnsafeBytes { serverStream.feed($0) }
        thread.submit(HandshakeThread.Step(place: 1, generation: 1, stream: serverStream))
        let results = waitForResults(thread)
        try #require(results.count == 1)
        guard case .failed(.handshake) = results[0].state else {
            Issue.record("a plaintext request is not a ClientHello: \(results[0].state)")
            return
        }
    }

    /// Several steps waiting at once come back in one take, in order, with one wake.
    @Test func stepsQueuedTogetherComeBackInOrder() throws {
        let thread = try HandshakeThread(name: "tls handshakes")
        defer { thread.stop() }
        var streams: [TLSStream] = []
        for place in 0..<20 {
            let client = TLSStream(context: try certificates.clientContext())
            client.handshake()
            let serverStream = TLSStream(context: server)
            moveCiphertext(client, serverStream)
            streams.append(serverStream)
            thread.submit(HandshakeThread.Step(place: place, generation: UInt16(place), stream: serverStream))
        }
        var results: [HandshakeThread.Result] = []
        var waited = 0
        while results.count < 20 && waited < 50 {
            results += waitForResults(thread)
            waited += 1
        }
        #expect(results.map(\.place) == Array(0..<20))
        #expect(results.allSatisfy { $0.state == .inProgress })
        #expect(streams.allSatisfy { $0.ciphertextBytesPending > 0 })
    }

    /// The thread weighs less than the workers when both want the CPU.
    @Test func theThreadIsNiced() throws {
        // A name of its own: other tests' threads may not have set their priority yet.
        let thread = try HandshakeThread(name: "tls nice test")
        defer { thread.stop() }
        // Its first step is after the thread set its priority.
        let serverStream = TLSStream(context: server)
        thread.submit(HandshakeThread.Step(place: 0, generation: 0, stream: serverStream))
        _ = waitForResults(thread)
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
        var nices: [Int] = []
        for task in tasks {
            let name = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
            guard name.trimmingCharacters(in: .whitespacesAndNewlines) == "tls nice test" else { continue }
            let stat = try String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8)
            // Fields after the command's closing parenthesis: state is field 3, nice field 19.
            let fields = stat[stat.range(of: ")", options: .backwards)!.upperBound...].split(separator: " ")
            nices.append(Int(fields[16])!)
        }
        let ownNice = Int(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0))
        try #require(!nices.isEmpty, "no thread named tls nice test")
        #expect(nices.allSatisfy { $0 >= min(19, ownNice + Int(HandshakeThread.niceIncrement)) })
    }

    @Test func stopEndsTheThreadWithStepsWaiting() throws {
        let thread = try HandshakeThread(name: "tls handshakes")
        for place in 0..<50 {
            let client = TLSStream(context: try certificates.clientContext())
            client.handshake()
            let serverStream = TLSStream(context: server)
            moveCiphertext(client, serverStream)
            thread.submit(HandshakeThread.Step(place: place, generation: 0, stream: serverStream))
        }
        let start = Date()
        thread.stop()
        #expect(Date().timeIntervalSince(start) < 5)
    }
}
