import Glibc
import Platform
import Ring
import Yams

/// `--config FILE`: a YAML mapping whose keys are the run command's long
/// flag names without the dashes, and whose values are what the flag would
/// take, as text (`timeout: 2s`, `backlog: 16MiB`, `mirror: [":8082", ":8083@10%"]`,
/// `compare: true`).
///
/// The file is read into those flags' texts and nothing more: the values are
/// parsed by the same code as the command line's (the CLI feeds the file's
/// texts to its argument parser behind the flags given on the command line),
/// so a duration, a size or an address is parsed in one place only.
///
/// Why Yams and not apple/swift-configuration: the file is one flat mapping
/// read whole at start and on SIGHUP, and what matters is exact errors (the
/// key, its line, the reason) and refusing unknown keys; swift-configuration's
/// providers answer lookups of known keys and say nothing of keys nobody
/// asks for, and its reloading provider polls on a task of its own, where a
/// reload here must be one synchronous, all-or-nothing step taken on SIGHUP.
/// Yams (libyaml underneath) gives the syntax tree with marks.
public struct ConfigFile: Equatable, Sendable {
    /// What a key's value is: one text, a list of texts (a scalar is a
    /// list of one), or a flag (true or false).
    public enum Kind: Sendable { case value, list, flag }

    public struct Key: Sendable {
        public let name: String
        public let kind: Kind
        /// The flag's short name, if it has one (goduplicator's `-l -f -m -t`).
        public let short: Character?
    }

    /// Every key a file may hold: the run command's options, less those that
    /// only make sense on a command line (`--check`, `--config`, `--help`, and
    /// `--handover-socket`, which names this process, not the experiment).
    public static let keys: [Key] = [
        Key(name: "listen", kind: .value, short: "l"),
        Key(name: "forward", kind: .value, short: "f"),
        Key(name: "mirror", kind: .list, short: "m"),
        Key(name: "timeout", kind: .value, short: "t"),
        Key(name: "main-connect-timeout", kind: .value, short: nil),
        Key(name: "backlog", kind: .value, short: nil),
        Key(name: "backlog-chunks", kind: .value, short: nil),
        Key(name: "slot-size", kind: .value, short: nil),
        Key(name: "max-memory", kind: .value, short: nil),
        Key(name: "max-sessions", kind: .value, short: nil),
        Key(name: "idle-timeout", kind: .value, short: nil),
        Key(name: "threads", kind: .value, short: nil),
        Key(name: "mirror-linger", kind: .value, short: nil),
        Key(name: "drain-timeout", kind: .value, short: nil),
        Key(name: "stats-interval", kind: .value, short: nil),
        Key(name: "metrics", kind: .value, short: nil),
        Key(name: "backend", kind: .value, short: nil),
        Key(name: "ring-mode", kind: .value, short: nil),
        Key(name: "zerocopy", kind: .value, short: nil),
        Key(name: "wait-batch", kind: .value, short: nil),
        Key(name: "accept-gathering", kind: .value, short: nil),
        Key(name: "wait-batch-timeout", kind: .value, short: nil),
        Key(name: "mirror-discard-batch", kind: .value, short: nil),
        Key(name: "send-proxy", kind: .value, short: nil),
        Key(name: "accept-proxy", kind: .flag, short: nil),
        Key(name: "proxy-header-timeout", kind: .value, short: nil),
        Key(name: "compare", kind: .flag, short: nil),
        Key(name: "compare-window", kind: .value, short: nil),
        Key(name: "dump-dir", kind: .value, short: nil),
        Key(name: "dump-bytes", kind: .value, short: nil),
        Key(name: "dump-max-files", kind: .value, short: nil),
        Key(name: "dump-queue", kind: .value, short: nil),
        Key(name: "record-dir", kind: .value, short: nil),
        Key(name: "record-sample", kind: .value, short: nil),
        Key(name: "record-bytes", kind: .value, short: nil),
        Key(name: "record-max-bytes", kind: .value, short: nil),
        Key(name: "mirror-batch-bytes", kind: .value, short: nil),
        Key(name: "mirror-batch-delay", kind: .value, short: nil),
        Key(name: "mirror-turns", kind: .value, short: nil),
        Key(name: "mirror-turn-timeout", kind: .value, short: nil),
        Key(name: "mirror-slots", kind: .value, short: nil),
        Key(name: "log-level", kind: .value, short: nil),
        Key(name: "tls-cert", kind: .value, short: nil),
        Key(name: "tls-key", kind: .value, short: nil),
        Key(name: "tls-alpn", kind: .value, short: nil),
        Key(name: "tls-handshake-timeout", kind: .value, short: nil),
        Key(name: "forward-tls", kind: .flag, short: nil),
        Key(name: "forward-ca", kind: .value, short: nil),
        Key(name: "forward-server-name", kind: .value, short: nil),
        Key(name: "mirror-tls", kind: .flag, short: nil),
        Key(name: "mirror-ca", kind: .value, short: nil),
    ]

    static let keysByName: [String: Key] = Dictionary(uniqueKeysWithValues: keys.map { ($0.name, $0) })

    /// One entry per key of the file, in the file's order: the texts its
    /// flag would be given (a flag that is false has none).
    public struct Entry: Equatable, Sendable {
        public let key: String
        public let values: [String]
        /// For a flag: whether it is on.
        public let isOn: Bool
    }

    public let path: String
    public let entries: [Entry]

    public init(path: String, entries: [Entry]) {
        self.path = path
        self.entries = entries
    }

    /// Reads and checks `path`: one line naming the key and the reason for
    /// the first thing wrong (a syntax error names its line instead).
    public static func read(path: String) throws(ConfigError) -> ConfigFile {
        let text: String
        do {
            text = try readText(path)
        } catch {
            throw ConfigError("config file \(path): \(error.message)")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws(ConfigError) -> ConfigFile {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigError("config file \(path): not YAML: \(oneLine("\(error)"))")
        }
        guard let root else { return ConfigFile(path: path, entries: []) }
        guard case .mapping(let mapping) = root else {
            throw ConfigError("config file \(path): expected a mapping of option names to values (listen: :8080)")
        }
        var entries: [Entry] = []
        var seen: Set<String> = []
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let keyScalar) = keyNode else {
                throw ConfigError("config file \(path)\(where_(keyNode)): a key must be an option name")
            }
            let name = keyScalar.string
            let place = "config file \(path)\(where_(keyNode)): key '\(name)'"
            guard let key = keysByName[name] else {
                let hint = name.hasPrefix("-") ? " (write it without the dashes)" : ""
                throw ConfigError("\(place): unknown key\(hint); known keys: \(keys.map(\.name).joined(separator: ", "))")
            }
            guard seen.insert(name).inserted else { throw ConfigError("\(place): given twice") }
            entries.append(try entry(key, valueNode, place: place))
        }
        return ConfigFile(path: path, entries: entries)
    }

    private static func entry(_ key: Key, _ node: Node, place: String) throws(ConfigError) -> Entry {
        switch (key.kind, node) {
        case (_, .scalar(let scalar)) where scalar.tag == Tag(.null) || (scalar.string.isEmpty && scalar.style == .plain):
            throw ConfigError("\(place): has no value")
        case (.flag, .scalar):
            guard let on = node.bool else { throw ConfigError("\(place): expected true or false, got '\(node.string ?? "")'") }
            return Entry(key: key.name, values: [], isOn: on)
        case (.value, .scalar(let scalar)):
            return Entry(key: key.name, values: [scalar.string], isOn: true)
        case (.list, .scalar(let scalar)):
            return Entry(key: key.name, values: [scalar.string], isOn: true)
        case (.list, .sequence(let sequence)):
            var values: [String] = []
            for item in sequence {
                guard case .scalar(let scalar) = item, !scalar.string.isEmpty else {
                    throw ConfigError("\(place): each item must be one address like :8082 or :8082@10%")
                }
                values.append(scalar.string)
            }
            return Entry(key: key.name, values: values, isOn: true)
        case (.list, _):
            throw ConfigError("\(place): expected a list of addresses (or one address)")
        case (.flag, _):
            throw ConfigError("\(place): expected true or false")
        case (.value, _):
            throw ConfigError("\(place): expected one value, not a list or a mapping")
        }
    }

    /// " (line N)" where the node is, if known.
    private static func where_(_ node: Node) -> String {
        node.mark.map { " (line \($0.line))" } ?? ""
    }

    /// Yams's errors span lines (the text and a caret): the first line that says something.
    static func oneLine(_ text: String) -> String {
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: " ") }.filter { !$0.isEmpty }
        return lines.prefix(1).joined()
    }

    /// The whole file, or why not.
    private static func readText(_ path: String) throws(ConfigError) -> String {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigError(SystemCallError.describe(errorNumber: errno)) }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw ConfigError(SystemCallError.describe(errorNumber: errno))
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
            guard bytes.count <= 1 << 20 else { throw ConfigError("larger than 1MiB: not a configuration file?") }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A digest of the file's settings (FNV-1a of the entries in the order
    /// given), for `duplicator_config_info`: which configuration runs.
    public var digest: String { Self.digest(of: entries.map { "\($0.key)=\($0.isOn ? $0.values.joined(separator: ",") : "false")" }.joined(separator: "\n")) }

    public static func digest(of text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01B3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set }.reversed().drop { $0 == set }.reversed())
    }
}
