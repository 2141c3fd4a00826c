import Duplicator
import Platform
import Replay

/// What each fuzz target asserts of one input (Fuzz/, docs/testing.md): the
/// parser returns or throws, never traps, and what it accepts keeps its
/// promises. The libFuzzer targets call these; so does
/// FuzzRegressionTests, over every committed seed and crash file, so that
/// an input that once failed stays a test. A failed promise is a
/// `preconditionFailure`, which libFuzzer reports as a crash and saves.
public enum FuzzChecks {
    /// The checks by target name (the folder names under Fuzz/Corpus).
    public static let all: [(name: String, check: @Sendable (UnsafeRawBufferPointer) -> Void)] = [
        ("ProxyHeader", proxyHeader),
        ("Address", address),
        ("Size", size),
        ("Duration", duration),
        ("ConfigFile", configFile),
        ("Pcap", capture),
        ("Pcapng", capture),
    ]

    /// The capture readers of `duplicator replay` (classic pcap and pcapng,
    /// told apart by their first bytes, so one check serves both targets;
    /// their seeds differ): any input is packets or one error; every packet
    /// lies within the input; and the decoder and the reassembly take
    /// whatever the reader gave without trapping, each session's turns
    /// within its streams and in order.
    public static func capture(_ bytes: UnsafeRawBufferPointer) {
        guard let contents = try? CaptureFile.read(bytes) else { return }
        for packet in contents.packets {
            precondition(packet.dataOffset >= 0 && packet.capturedLength >= 0
                         && packet.dataOffset + packet.capturedLength <= bytes.count,
                         "a packet at \(packet.dataOffset) of \(packet.capturedLength) bytes in \(bytes.count)")
            precondition(packet.originalLength >= packet.capturedLength, "captured more than the original")
        }
        if let offset = contents.truncatedAtOffset { precondition(offset <= bytes.count, "truncated past the end") }
        for serverPort in [nil, UInt16(6379)] {
            var assembler = CaptureAssembler(serverPort: serverPort)
            assembler.add(contents, bytes: bytes)
            for session in assembler.finish() {
                var request = 0
                var reply = 0
                for turn in session.turns {
                    precondition(turn.requestEnd >= request && turn.replyEnd >= reply, "turns out of order")
                    request = turn.requestEnd
                    reply = turn.replyEnd
                }
                precondition(request <= session.clientBytes.count && reply <= session.serverBytes.count, "turns past the streams")
                precondition(request == session.clientBytes.count && reply == session.serverBytes.count, "bytes in no turn")
            }
        }
    }

    /// The PROXY protocol header reader (`--accept-proxy`): a header it
    /// accepts is within the input and the protocol's bound, a prefix of
    /// the input only grows towards the same answer, and "incomplete" is
    /// only said while fewer than the longest header's bytes are there.
    public static func proxyHeader(_ bytes: UnsafeRawBufferPointer) {
        let outcome = ProxyProtocol.parse(bytes)
        switch outcome {
        case .complete(let length, _):
            precondition(length > 0 && length <= bytes.count && length <= ProxyProtocol.headerBytesMax,
                         "a header of \(length) bytes in \(bytes.count)")
            // The header alone says the same: nothing after it was read.
            let alone = ProxyProtocol.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
            precondition(alone == outcome, "the header alone parses as \(alone), with what follows as \(outcome)")
            // One byte short of it is never complete.
            if case .complete = ProxyProtocol.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<(length - 1)])) {
                preconditionFailure("\(length - 1) bytes of a \(length)-byte header parse as complete")
            }
        case .incomplete:
            precondition(bytes.count < ProxyProtocol.headerBytesMax,
                         "incomplete after \(bytes.count) bytes, beyond the longest header")
        case .invalid:
            break
        }
    }

    /// The address parsers of -l, -f and -m: any text, any role.
    public static func address(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        for role in [Endpoint.Role.listen, .connect] {
            if let endpoint = try? Endpoint(parsing: text, role: role) {
                precondition(endpoint.port != 0 || role == .listen, "'\(text)': port 0 to connect to")
                if let host = endpoint.host { precondition(!host.isEmpty, "'\(text)': an empty host") }
            }
        }
        _ = try? HostPort(parsing: text)
    }

    /// Sizes (--max-memory, --slot-size, ...): a parsed size is not negative,
    /// and its shortest text parses back to it.
    public static func size(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let value = try? SizeParser.bytes(text) else { return }
        precondition(value >= 0, "'\(text)' is \(value) bytes")
        let again = try? SizeParser.bytes(SizeParser.text(value))
        precondition(again == value, "'\(text)' is \(value), whose text '\(SizeParser.text(value))' is \(String(describing: again))")
    }

    /// Durations (-t, --idle-timeout, ...): not negative, and the shortest
    /// text parses back to the same (exactly, within a Double's integers).
    public static func duration(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let value = try? DurationParser.nanoseconds(text) else {
            _ = try? DurationParser.milliseconds(text)
            return
        }
        precondition(value >= 0, "'\(text)' is \(value) ns")
        let milliseconds = try? DurationParser.milliseconds(text)
        precondition(milliseconds.map { $0 >= 0 && (value == 0) == ($0 == 0) } ?? false, "'\(text)': \(String(describing: milliseconds)) ms")
        guard value < 1 << 53 else { return }
        let again = try? DurationParser.nanoseconds(DurationParser.text(nanoseconds: value))
        precondition(again == value, "'\(text)' is \(value) ns, whose text '\(DurationParser.text(nanoseconds: value))' is \(String(describing: again))")
    }

    /// The `--config` reader (YAML through Yams): any text is a file or one
    /// error, and a file's entries are keys the reader knows, each in the
    /// file once: a flag with no value text, an option with exactly one.
    public static func configFile(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let file = try? ConfigFile.parse(text, path: "fuzz.yaml") else { return }
        var seen = Set<String>()
        for entry in file.entries {
            guard let key = ConfigFile.keys.first(where: { $0.name == entry.key }) else {
                preconditionFailure("an unknown key '\(entry.key)' was taken")
            }
            precondition(seen.insert(entry.key).inserted, "'\(entry.key)' taken twice")
            switch key.kind {
            case .flag: precondition(entry.values.isEmpty, "flag '\(entry.key)' with values \(entry.values)")
            case .value: precondition(entry.values.count == 1 && entry.isOn, "'\(entry.key)' with values \(entry.values)")
            case .list: precondition(entry.isOn, "list '\(entry.key)' off")
            }
        }
    }
}
