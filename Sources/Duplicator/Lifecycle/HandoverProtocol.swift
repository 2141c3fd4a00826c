import Glibc
import Platform

/// What a failed handover says: one line, for the log of the process that
/// tried it (which then binds normally) or that refused it (which goes on).
public struct HandoverError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The messages of a handover (`--handover-socket`), one line each over the
/// Unix socket, versioned:
///
///     new -> old   duplicator-handover 1 request pid=4242
///     old -> new   duplicator-handover 1 offer listeners=4 metrics=1 pid=4141   (+ 5 descriptors, SCM_RIGHTS)
///              or  duplicator-handover 1 refused <why>
///     new -> old   duplicator-handover 1 taken          (it accepts on them now)
///     old -> new   duplicator-handover 1 stopped        (it stops accepting, drains, exits 0)
///
/// The new process closes the connection without `taken` when it cannot use
/// what it got; the old one then goes on as if nothing had happened. Pure:
/// parsing is tested on its own.
public enum HandoverMessage: Equatable, Sendable {
    case request(pid: Int32)
    case offer(listeners: Int, metrics: Bool, pid: Int32)
    case refused(String)
    case taken
    case stopped

    public static let version = 1
    static let magic = "duplicator-handover"
    /// A longer line is not ours.
    public static let bytesMax = 512

    public var text: String {
        let body: String
        switch self {
        case .request(let pid): body = "request pid=\(pid)"
        case .offer(let listeners, let metrics, let pid): body = "offer listeners=\(listeners) metrics=\(metrics ? 1 : 0) pid=\(pid)"
        case .refused(let reason):
            // One printable line, whatever the reason held.
            let clean = String(reason.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7f ? Character($0) : "?" })
            body = "refused " + String(clean.prefix(Self.bytesMax - 64))
        case .taken: body = "taken"
        case .stopped: body = "stopped"
        }
        return "\(Self.magic) \(Self.version) \(body)\n"
    }

    public var bytes: [UInt8] { Array(text.utf8) }

    /// One whole line (its newline included) as it came from the peer.
    public static func parse(_ bytes: [UInt8]) throws(HandoverError) -> HandoverMessage {
        guard bytes.count <= bytesMax else { throw HandoverError("a handover message of more than \(bytesMax) bytes") }
        guard bytes.last == UInt8(ascii: "\n") else { throw HandoverError("a handover message without its end of line") }
        let line = bytes.dropLast()
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else {
            throw HandoverError("a handover message with bytes that are not printable ASCII")
        }
        let words = String(decoding: line, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard words.count >= 3, words[0] == magic else {
            throw HandoverError("not a duplicator handover message: '\(String(decoding: line.prefix(60), as: UTF8.self))'")
        }
        guard let version = Int(words[1]), version >= 1 else { throw HandoverError("a handover message with version '\(words[1])'") }
        guard version == Self.version else {
            throw HandoverError("handover protocol version \(version); this build speaks version \(Self.version)")
        }
        let fields = Array(words[3...])
        switch words[2] {
        case "request":
            let values = try Self.fields(fields, ["pid"])
            return .request(pid: try Self.pid(values[0]))
        case "offer":
            let values = try Self.fields(fields, ["listeners", "metrics", "pid"])
            guard let listeners = Int(values[0]), listeners >= 1, listeners < DescriptorPassing.descriptorsMax else {
                throw HandoverError("a handover offer of '\(values[0])' listeners (1 to \(DescriptorPassing.descriptorsMax - 1))")
            }
            guard values[1] == "0" || values[1] == "1" else { throw HandoverError("a handover offer with metrics='\(values[1])' (0 or 1)") }
            return .offer(listeners: listeners, metrics: values[1] == "1", pid: try Self.pid(values[2]))
        case "refused":
            return .refused(fields.joined(separator: " "))
        case "taken":
            _ = try Self.fields(fields, [])
            return .taken
        case "stopped":
            _ = try Self.fields(fields, [])
            return .stopped
        default:
            throw HandoverError("an unknown handover message '\(words[2])'")
        }
    }

    /// The values of `names`, given as name=value in that order and nothing else.
    private static func fields(_ fields: [String], _ names: [String]) throws(HandoverError) -> [String] {
        guard fields.count == names.count else {
            throw HandoverError("a handover message with \(fields.count) fields where \(names.count) were expected")
        }
        var values: [String] = []
        for (field, name) in zip(fields, names) {
            guard field.hasPrefix(name + "="), field.count > name.count + 1 else {
                throw HandoverError("a handover message with '\(field)' where \(name)=... was expected")
            }
            values.append(String(field.dropFirst(name.count + 1)))
        }
        return values
    }

    private static func pid(_ text: String) throws(HandoverError) -> Int32 {
        guard let pid = Int32(text), pid > 0 else { throw HandoverError("a handover message with pid '\(text)'") }
        return pid
    }
}

/// What the new process checks of each listener it received, before it
/// serves on any: a listening TCP socket on its own `-l` (or `--metrics`)
/// address. Pure over the facts `HandoverListener.facts` reads.
public struct HandoverListener: Sendable {
    public var isListeningStream: Bool
    public var address: SocketAddress?

    public init(isListeningStream: Bool, address: SocketAddress?) {
        self.isListeningStream = isListeningStream
        self.address = address
    }

    /// The facts of descriptor `fd` as the kernel tells them.
    static func facts(_ fd: Int32) -> HandoverListener {
        func option(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        let listening = option(SO_ACCEPTCONN) == 1 && option(SO_TYPE) == Int32(SOCK_STREAM.rawValue)
            && option(SO_PROTOCOL) == Int32(IPPROTO_TCP)
        return HandoverListener(isListeningStream: listening, address: Sockets.localAddress(fd))
    }

    /// Throws unless every listener listens on `expected` (any port when it
    /// asks for port 0), all on one port; `what` names the flag ("-l :8080").
    public static func check(_ listeners: [HandoverListener], expected: SocketAddress, what: String) throws(HandoverError) {
        for listener in listeners {
            guard listener.isListeningStream, let address = listener.address,
                  address.family == AF_INET || address.family == AF_INET6 else {
                throw HandoverError("a descriptor handed over is not a listening TCP socket")
            }
            guard address.family == expected.family, HostAddress(address) == HostAddress(expected),
                  expected.port == 0 || address.port == expected.port, address.port == listeners[0].address?.port else {
                throw HandoverError("the listener handed over is on \(address), not on \(what) (\(expected))")
            }
        }
    }
}
