/// Bytes as a person reads them in a log or `--check`: the largest binary
/// unit with at least one whole of it, to one decimal where it is not
/// whole: "1 MiB" (never "0 MiB" for 1 MiB, as a shift by 20 printed for
/// 1048575 bytes and below), "1.5 MiB", "64 KiB", "100 B".
public enum ReadableBytes {
    public static func text(_ bytes: Int) -> String {
        let units: [(String, Int)] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        guard let (unit, scale) = units.first(where: { bytes >= $0.1 }) else { return "\(bytes) B" }
        if bytes % scale == 0 { return "\(bytes / scale) \(unit)" }
        let tenths = (bytes * 10 + scale / 2) / scale
        return tenths % 10 == 0 ? "\(tenths / 10) \(unit)" : "\(tenths / 10).\(tenths % 10) \(unit)"
    }
}
