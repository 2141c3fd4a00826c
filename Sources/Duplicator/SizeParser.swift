/// Byte sizes as flags take them: `4194304`, `64k`, `64KiB`, `4M`, `4MiB`, `1G`
/// (binary multiples; the `iB` and `B` suffixes are optional).
public enum SizeParser {
    public static func bytes(_ text: String) throws(ConfigError) -> Int {
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        var unit = text.dropFirst(digits.count).lowercased()
        if unit.hasSuffix("ib") { unit.removeLast(2) } else if unit.hasSuffix("b") { unit.removeLast() }
        let scale: Int
        switch unit {
        case "": scale = 1
        case "k": scale = 1 << 10
        case "m": scale = 1 << 20
        case "g": scale = 1 << 30
        default: throw ConfigError("size '\(text)': expected bytes, like 65536, 64KiB or 4MiB")
        }
        guard !digits.isEmpty, let value = Int(digits), value <= Int.max / scale else {
            throw ConfigError("size '\(text)': expected bytes, like 65536, 64KiB or 4MiB")
        }
        return value * scale
    }
}
