/// `-m ADDR@P%`: a mirror that gets only about P% of the sessions, chosen
/// per session, for a mirror that cannot take the full load.
public enum MirrorSampling {
    /// A session is mirrored when a uniform 32-bit draw is below the
    /// threshold: 2^32 for every session.
    public static let everySession: UInt64 = 1 << 32

    /// Splits `ADDR@P%` into the address and the percentage (nil: no `@`,
    /// every session). The percentage is a decimal number above 0 and at
    /// most 100, followed by `%`.
    public static func parse(_ text: String) throws(ConfigError) -> (address: String, percent: Double?) {
        guard let at = text.firstIndex(of: "@") else { return (text, nil) }
        let address = String(text[..<at])
        let share = text[text.index(after: at)...]
        let hint = "expected a percentage above 0 and at most 100 after '@', like '\(address)@10%'"
        guard share.hasSuffix("%") else { throw ConfigError("-m '\(text)': \(hint)") }
        let number = share.dropLast()
        // Digits with at most one dot: Double() alone would take "nan", "inf" and "1e3".
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              number.filter({ $0 == "." }).count <= 1, number != ".", let percent = Double(number) else {
            throw ConfigError("-m '\(text)': \(hint)")
        }
        guard percent > 0, percent <= 100 else {
            throw ConfigError("-m '\(text)': the percentage must be above 0% and at most 100%, got \(number)%")
        }
        return (address, percent)
    }

    /// The draw threshold for `percent` (see `everySession`).
    public static func threshold(percent: Double) -> UInt64 {
        percent >= 100 ? everySession : UInt64((percent / 100 * Double(everySession)).rounded())
    }
}
