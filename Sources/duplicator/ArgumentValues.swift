import ArgumentParser
import Duplicator
import Logging
import Synchronization

/// A typed option value: parsed once, by the parser of `Duplicator/Config`
/// (sizes, durations, addresses, sampling), when the command line is read,
/// so `makeConfig` only copies values and a bad one is refused by the
/// argument parser with the reason.
///
/// swift-argument-parser's `init?(argument:)` cannot say why a value was
/// refused (its line names only the flag and the value), and a `transform:`
/// closure, which can, hides the default from `--help`: so the reason is kept
/// here by value and `ArgumentRefusals.line` puts it back into the one line.
protocol ArgumentValue: ExpressibleByArgument {
    static func parse(_ text: String) throws(ConfigError) -> Self
}

extension ArgumentValue {
    init?(argument: String) {
        do {
            self = try Self.parse(argument)
        } catch {
            ArgumentRefusals.record(value: argument, reason: error.message)
            return nil
        }
    }
}

/// Why each refused value was refused (see `ArgumentValue`).
enum ArgumentRefusals {
    private static let reasons = Mutex<[String: String]>([:])

    static func record(value: String, reason: String) {
        reasons.withLock { $0[value] = reason }
    }

    /// The one line for an error of the argument parser: its "The value 'V'
    /// is invalid for '--flag <name>'" becomes "--flag 'V': why" when a typed
    /// value said why; every other message is its first line, unchanged.
    static func line(for error: Error, of command: ParsableArguments.Type) -> String {
        let message = command.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        let text = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
        let head = "The value '"
        guard text.hasPrefix(head), let valueEnd = text.range(of: "' is invalid for '") else { return text }
        let value = String(text[text.index(text.startIndex, offsetBy: head.count)..<valueEnd.lowerBound])
        let flag = text[valueEnd.upperBound...].prefix { $0 != " " && $0 != "'" }
        // Taken, not read: a reload's refused values do not pile up here.
        guard let reason = reasons.withLock({ reasons in defer { reasons.removeAll() }; return reasons[value] }) else { return text }
        // A reason that names its flag already (-m's sampling) is the line.
        if reason.hasPrefix("-") { return reason }
        // The parsers name the value ("duration '1x': expected ..."): keep what they say of it.
        let why = reason.range(of: "'\(value)': ").map { String(reason[$0.upperBound...]) } ?? reason
        return "\(flag) '\(value)': \(why)"
    }
}

/// A size with the proxy's suffixes (`65536`, `64KiB`, `4MiB`), exact in bytes.
struct ByteSize: ArgumentValue, Equatable {
    let bytes: Int

    init(_ bytes: Int) { self.bytes = bytes }

    static func parse(_ text: String) throws(ConfigError) -> ByteSize { ByteSize(try SizeParser.bytes(text)) }

    var defaultValueDescription: String { SizeParser.text(bytes) }
}

/// A Go-style duration (`500ms`, `2s`, `1m30s`) for a setting kept in
/// whole milliseconds: a value finer than that is refused, not rounded.
struct Milliseconds: ArgumentValue, Equatable {
    let milliseconds: Int

    init(_ milliseconds: Int) { self.milliseconds = milliseconds }

    static func parse(_ text: String) throws(ConfigError) -> Milliseconds {
        Milliseconds(Int(try DurationUnit.exact(text, unitNanoseconds: 1_000_000, unitText: "1ms")))
    }

    var defaultValueDescription: String { DurationParser.text(milliseconds: milliseconds) }
}

/// A Go-style duration (`50us`, `1ms`) for a setting kept in whole
/// microseconds: a value finer than that is refused, not rounded.
struct Microseconds: ArgumentValue, Equatable {
    let microseconds: Int

    init(_ microseconds: Int) { self.microseconds = microseconds }

    static func parse(_ text: String) throws(ConfigError) -> Microseconds {
        Microseconds(Int(try DurationUnit.exact(text, unitNanoseconds: 1_000, unitText: "1us")))
    }

    var defaultValueDescription: String { DurationParser.text(nanoseconds: Int64(microseconds) * 1_000) }
}

/// Durations in a setting's own unit, exactly.
enum DurationUnit {
    /// `text` as a count of `unitNanoseconds`; negative durations and
    /// durations that are not a whole number of the unit are refused.
    static func exact(_ text: String, unitNanoseconds: Int64, unitText: String) throws(ConfigError) -> Int64 {
        if text.hasPrefix("-") { throw ConfigError("duration '\(text)': negative durations are refused") }
        let nanoseconds = try DurationParser.nanoseconds(text)
        guard nanoseconds % unitNanoseconds == 0 else {
            throw ConfigError("duration '\(text)': not a whole number of this option's smallest unit, \(unitText)")
        }
        return nanoseconds / unitNanoseconds
    }
}

/// `-l` and `--metrics`: an address to listen on (port 0: any free port).
struct ListenAddress: ArgumentValue, Equatable {
    let endpoint: Endpoint

    static func parse(_ text: String) throws(ConfigError) -> ListenAddress {
        ListenAddress(endpoint: try Endpoint(parsing: text, role: .listen))
    }

    var defaultValueDescription: String { endpoint.text }
}

/// `-f`: the address of a server to connect to.
struct ServerAddress: ArgumentValue, Equatable {
    let endpoint: Endpoint

    static func parse(_ text: String) throws(ConfigError) -> ServerAddress {
        ServerAddress(endpoint: try Endpoint(parsing: text, role: .connect))
    }

    var defaultValueDescription: String { endpoint.text }
}

/// One `-m` value: goduplicator's comma-separated list of mirrors, each
/// `ADDR` or `ADDR@P%` (about P% of the sessions, chosen per session).
struct MirrorList: ArgumentValue, Equatable {
    struct Mirror: Equatable {
        let endpoint: Endpoint
        /// nil: every session.
        let samplePercent: Double?
    }

    let mirrors: [Mirror]

    static func parse(_ text: String) throws(ConfigError) -> MirrorList {
        var mirrors: [Mirror] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let item = String(part.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
            guard !item.isEmpty else { throw ConfigError("-m '\(text)': empty mirror address") }
            let (address, percent) = try MirrorSampling.parse(item)
            mirrors.append(Mirror(endpoint: try Endpoint(parsing: address, role: .connect), samplePercent: percent))
        }
        return MirrorList(mirrors: mirrors)
    }

    var defaultValueDescription: String {
        mirrors.map { $0.endpoint.text + ($0.samplePercent.map { "@\($0)%" } ?? "") }.joined(separator: ",")
    }
}

/// `--log-level`: swift-log's levels by name.
struct LogLevel: ArgumentValue, Equatable {
    let level: Logger.Level

    static func parse(_ text: String) throws(ConfigError) -> LogLevel {
        guard let level = Logger.Level(rawValue: text) else {
            throw ConfigError("'\(text)': expected \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return LogLevel(level: level)
    }

    static var allValueStrings: [String] { Logger.Level.allCases.map(\.rawValue) }

    var defaultValueDescription: String { level.rawValue }
}

/// The enumerations of `Config` by their names, each refused value with
/// the list. (Public types: their `init?(argument:)` must be public, so
/// each conformance writes it, calling `choice`.)
protocol NamedChoice: ExpressibleByArgument, CaseIterable, RawRepresentable<String> {}

extension NamedChoice {
    static func choice(_ text: String) -> Self? {
        if let value = Self(rawValue: text) { return value }
        let names = allCases.map(\.rawValue)
        let list = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names[names.count - 1] : names.joined()
        ArgumentRefusals.record(value: text, reason: "'\(text)': expected \(list)")
        return nil
    }
}

extension Config.Backend: NamedChoice {
    public init?(argument: String) { guard let value = Self.choice(argument) else { return nil }; self = value }
}

extension Config.RingMode: NamedChoice {
    public init?(argument: String) { guard let value = Self.choice(argument) else { return nil }; self = value }
}

extension AcceptGatheringMode: NamedChoice {
    public init?(argument: String) { guard let value = Self.choice(argument) else { return nil }; self = value }
}

extension ZeroCopyMode: NamedChoice {
    public init?(argument: String) { guard let value = Self.choice(argument) else { return nil }; self = value }
}

extension ProxyProtocol.Version: NamedChoice {
    public init?(argument: String) { guard let value = Self.choice(argument) else { return nil }; self = value }
}
