import Glibc
import Testing
import Platform
@testable import Duplicator

/// The handover's messages (`HandoverMessage`) and the check of the
/// listeners received (`HandoverListener.check`): pure, no sockets.
@Suite("HandoverProtocol")
struct HandoverProtocolTests {
    @Test("every message reads back as itself", arguments: [
        HandoverMessage.request(pid: 42), .offer(listeners: 4, metrics: true, pid: 7), .offer(listeners: 1, metrics: false, pid: 1),
        .refused("this process is stopping"), .taken, .stopped,
    ])
    func roundTrip(message: HandoverMessage) throws {
        #expect(try HandoverMessage.parse(message.bytes) == message)
        #expect(message.text.hasPrefix("duplicator-handover 1 ") && message.text.hasSuffix("\n"))
    }

    @Test("bad input is refused with one line naming what is wrong", arguments: [
        ("duplicator-handover 1 taken", "end of line"),
        ("duplicator-handover 2 taken\n", "version 2"),
        ("duplicator-handover x taken\n", "version 'x'"),
        ("haproxy 1 taken\n", "not a duplicator handover message"),
        ("duplicator-handover 1 hello\n", "unknown handover message 'hello'"),
        ("duplicator-handover 1 offer listeners=0 metrics=0 pid=3\n", "'0' listeners"),
        ("duplicator-handover 1 offer listeners=64 metrics=0 pid=3\n", "'64' listeners"),
        ("duplicator-handover 1 offer listeners=2 metrics=2 pid=3\n", "metrics='2'"),
        ("duplicator-handover 1 offer listeners=2 pid=3 metrics=1\n", "pid=3"),
        ("duplicator-handover 1 offer listeners=2 metrics=1\n", "2 fields where 3"),
        ("duplicator-handover 1 request pid=-1\n", "pid '-1'"),
        ("duplicator-handover 1 request pid=\n", "pid=... was expected"),
        ("duplicator-handover 1 taken now\n", "1 fields where 0"),
        ("duplicator-handover 1 taken\u{7}\n", "not printable ASCII"),
        ("duplicator-handover 1 taken\n\n", "not printable ASCII"),
    ])
    func refused(text: String, expected: String) {
        do {
            let message = try HandoverMessage.parse(Array(text.utf8))
            Issue.record("'\(text)' read as \(message)")
        } catch {
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(!error.message.contains("\n"))
        }
    }

    @Test("a message longer than the limit is refused")
    func tooLong() {
        let text = "duplicator-handover 1 refused " + String(repeating: "x", count: HandoverMessage.bytesMax) + "\n"
        #expect(throws: HandoverError.self) { try HandoverMessage.parse(Array(text.utf8)) }
        // A refusal's reason is cut and cleaned to fit one line.
        let message = HandoverMessage.refused(String(repeating: "y", count: 2000) + "\nnext")
        #expect(message.bytes.count <= HandoverMessage.bytesMax)
        #expect(message.text.filter { $0 == "\n" }.count == 1)
    }

    static let listen = SocketAddress(numericHost: "127.0.0.1", port: 8080)!

    @Test("listeners on the -l address pass")
    func matchingListeners() throws {
        let listener = HandoverListener(isListeningStream: true, address: Self.listen)
        try HandoverListener.check([listener, listener], expected: Self.listen, what: "-l")
        // -l with port 0: any port, as long as all share it.
        try HandoverListener.check([listener], expected: SocketAddress(numericHost: "127.0.0.1", port: 0)!, what: "-l")
    }

    @Test("another address, port or family, or a socket that does not listen, is refused", arguments: [
        HandoverListener(isListeningStream: true, address: SocketAddress(numericHost: "127.0.0.2", port: 8080)!),
        HandoverListener(isListeningStream: true, address: SocketAddress(numericHost: "127.0.0.1", port: 8081)!),
        HandoverListener(isListeningStream: true, address: SocketAddress(numericHost: "::ffff:127.0.0.1", port: 8080)!),
        HandoverListener(isListeningStream: false, address: listen),
        HandoverListener(isListeningStream: true, address: nil),
    ])
    func mismatchedListener(listener: HandoverListener) {
        #expect(throws: HandoverError.self) { try HandoverListener.check([listener], expected: Self.listen, what: "-l") }
    }

    @Test("listeners on two ports are refused even when -l says port 0")
    func twoPorts() {
        let any = SocketAddress(numericHost: "127.0.0.1", port: 0)!
        let first = HandoverListener(isListeningStream: true, address: SocketAddress(numericHost: "127.0.0.1", port: 9000)!)
        let second = HandoverListener(isListeningStream: true, address: SocketAddress(numericHost: "127.0.0.1", port: 9001)!)
        #expect(throws: HandoverError.self) { try HandoverListener.check([first, second], expected: any, what: "-l") }
    }
}
