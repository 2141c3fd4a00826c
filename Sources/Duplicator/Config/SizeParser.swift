/// Byte sizes as flags take them: `4194304`, `64k`, `64KiB`, `4M`, `4MiB`, `1G`
/// (binary multiples; the `iB` and `B` suffixes are optional).
public enum SizeParser {
    public static func bytes(_ text: String) throws(ConfigError) -> Int {
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        let units = ["": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
                     "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30]
        guard let scale = units[text.dropFirst(digits.count).lowercased()] else {
            throw ConfigError("size '\(text)': expected bytes, like 65536, 64KiB or 4MiB")
        }
        guard !digits.isEmpty, let value = Int(digits), value <= Int.max / scale else {
            throw ConfigError("size '\(text)': expected bytes, like 65536, 64KiB or 4MiB")
        }
        return value * scale
    }

    /// The shortest text `bytes` parses back from: `4MiB`, `16KiB`, `1GiB`, `1000`.
    public static func text(_ bytes: Int) -> String {
        for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where bytes > 0 && bytes % scale == 0 {
            return "\(bytes / scale)\(unit)"
        }
        return "\(bytes)"
    }
}
