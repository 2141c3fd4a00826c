/// Go-style durations as goduplicator's `-t` takes them: a sequence of
/// decimal numbers, each with a unit: `500ms`, `2s`, `1m30s`, `1.5s`,
/// `250us`. Units: ns, us (or µs), ms, s, m, h. A bare `0` is zero.
public enum DurationParser {
    /// The duration in nanoseconds.
    public static func nanoseconds(_ text: String) throws(ConfigError) -> Int64 {
        let invalid = ConfigError("duration '\(text)': expected a number with a unit, like 500ms, 2s or 1m30s")
        if text == "0" { return 0 }
        var rest = Substring(text)
        guard !rest.isEmpty else { throw invalid }
        var total: Double = 0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, number.filter({ $0 == "." }).count <= 1, number != ".",
                  let value = Double(number) else { throw invalid }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            rest = rest.dropFirst(unit.count)
            let scale: Double
            switch unit {
            case "ns": scale = 1
            case "us", "µs", "μs": scale = 1e3
            case "ms": scale = 1e6
            case "s": scale = 1e9
            case "m": scale = 60e9
            case "h": scale = 3600e9
            default: throw invalid
            }
            total += value * scale
            guard total <= Double(Int64.max) / 2 else { throw ConfigError("duration '\(text)' is too long") }
        }
        return Int64(total.rounded())
    }

    /// The duration in whole milliseconds, rounding up any fraction so a
    /// non-zero duration never becomes 0.
    public static func milliseconds(_ text: String) throws(ConfigError) -> Int {
        let nanoseconds = try nanoseconds(text)
        return Int((nanoseconds + 999_999) / 1_000_000)
    }

    /// The shortest text a duration parses back from, in its largest whole
    /// unit: `500ms`, `10s`, `10m`, `50us`, `0`.
    public static func text(nanoseconds: Int64) -> String {
        guard nanoseconds != 0 else { return "0" }
        let units: [(String, Int64)] = [("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000),
                                        ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
        let (unit, scale) = units.first { nanoseconds % $0.1 == 0 }!
        return "\(nanoseconds / scale)\(unit)"
    }

    public static func text(milliseconds: Int) -> String { text(nanoseconds: Int64(milliseconds) * 1_000_000) }
}
