import ArgumentParser
import Duplicator

/// `--config FILE` meets the command line: the file's entries become the
/// flags they name, placed before the command line's and only for the keys
/// the command line does not give, and the whole is parsed by the one
/// argument parser. So every value is parsed once, by the same code
/// (`ProxyOptions.makeConfig`), whichever it came from, and a flag on the
/// command line wins over the file.
enum ConfigArguments {
    /// The arguments as given, without the program's name: what a reload
    /// merges the file with again.
    static func commandLine(_ arguments: [String] = CommandLine.arguments) -> [String] {
        Array(arguments.dropFirst())
    }

    /// Whether `arguments` give the flag of `key` (long or short, with its
    /// value attached or apart). Only names before a `--` count.
    static func gives(_ key: ConfigFile.Key, in arguments: [String]) -> Bool {
        for argument in arguments {
            if argument == "--" { return false }
            if argument == "--\(key.name)" || argument.hasPrefix("--\(key.name)=") { return true }
            if let short = key.short, argument.hasPrefix("-\(short)"), !argument.hasPrefix("--") { return true }
        }
        return false
    }

    /// The file's flags for the keys `commandLine` does not give, then `commandLine`.
    static func merge(_ file: ConfigFile, commandLine: [String]) -> [String] {
        var merged: [String] = []
        for entry in file.entries {
            guard let key = ConfigFile.keys.first(where: { $0.name == entry.key }),
                  !gives(key, in: commandLine) else { continue }
            switch key.kind {
            case .flag: if entry.isOn { merged.append("--\(key.name)") }
            // `=` keeps a value that starts with a dash a value.
            case .value, .list: merged += entry.values.map { "--\(key.name)=\($0)" }
            }
        }
        return merged + commandLine
    }

    /// The options the command line and the file at `path` give together,
    /// or one line naming what is wrong (the key, when it is the file's).
    static func options(path: String, commandLine: [String]) throws(ConfigError) -> (ProxyOptions, ConfigFile) {
        let file = try ConfigFile.read(path: path)
        let merged = merge(file, commandLine: commandLine)
        do {
            return (try ProxyOptions.parse(merged), file)
        } catch {
            throw attributed(ConfigError(ArgumentRefusals.line(for: error, of: ProxyOptions.self)), file: file,
                             commandLine: commandLine)
        }
    }

    /// The config that the command line and the file give, validated.
    static func config(path: String, commandLine: [String]) throws(ConfigError) -> (Config, ProxyOptions, ConfigFile) {
        let (options, file) = try options(path: path, commandLine: commandLine)
        do {
            return (try options.makeConfig(), options, file)
        } catch {
            throw attributed(error, file: file, commandLine: commandLine)
        }
    }

    /// A value's error names its flag (or only quotes the value): when that
    /// flag's value came from the file, the line says so and names the key
    /// (otherwise it is the command line's, and stays as it is).
    static func attributed(_ error: ConfigError, file: ConfigFile, commandLine: [String]) -> ConfigError {
        for entry in file.entries {
            guard let key = ConfigFile.keys.first(where: { $0.name == entry.key }), !gives(key, in: commandLine) else { continue }
            let named = Self.names("--\(key.name)", in: error.message) || error.message.contains("'\(key.name)'")
                || key.short.map { error.message.hasPrefix("-\($0)") } == true
            let quoted = entry.values.contains { !$0.isEmpty && error.message.contains("'\($0)'") }
            if named || quoted {
                // "--timeout 'soon': why" is the flag the file's key became: say it as the key's value.
                let flagPrefix = "--\(key.name) '"
                let message = error.message.hasPrefix(flagPrefix) ? "value '" + error.message.dropFirst(flagPrefix.count) : error.message
                return ConfigError("config file \(file.path): key '\(key.name)': \(message)")
            }
        }
        return error
    }

    /// Whether `message` names `flag` itself, not a longer flag it begins
    /// (`--mirror` in "--mirror-turn-timeout '1x'" is not `--mirror`).
    static func names(_ flag: String, in message: String) -> Bool {
        var rest = message[...]
        while let found = rest.range(of: flag) {
            let next = rest[found.upperBound...].first
            if next.map({ !($0.isLetter || $0.isNumber || $0 == "-") }) ?? true { return true }
            rest = rest[found.upperBound...]
        }
        return false
    }
}
