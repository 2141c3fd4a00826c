/// `--record-dir`: every session (or a sample of them) written as a pcapng
/// file for `duplicator replay`. Checked once, at start; the writer
/// (`RecordWriter`) starts with the process, so a reload does not change it.
public struct RecordingConfig: Sendable, Equatable {
    public var directory: String
    /// The share of sessions recorded (`--record-sample P%`), above 0 and at most 100.
    public var samplePercent: Double = 100
    /// What a session keeps of each direction (`--record-bytes`); later bytes are counted, not kept.
    public var bytesPerDirection = Defaults.recordBytes
    /// The most this process writes into the directory (`--record-max-bytes`):
    /// once the next file would pass it, recording stops (counted).
    public var directoryBytesMax = Defaults.recordMaxBytes

    public init(directory: String) {
        self.directory = directory
    }

    public func validate() throws(ConfigError) {
        guard !directory.isEmpty else { throw ConfigError("--record-dir: an empty path") }
        guard samplePercent > 0 && samplePercent <= 100 else {
            throw ConfigError("--record-sample must be above 0% and at most 100%")
        }
        guard (1...(64 << 20)).contains(bytesPerDirection) else {
            throw ConfigError("--record-bytes must be from 1 byte to 64MiB, got \(bytesPerDirection)")
        }
        guard directoryBytesMax >= 4096 else { throw ConfigError("--record-max-bytes must be at least 4KiB") }
    }

    /// `--record-sample`: "25%", "25" or "0.5%".
    public static func percent(_ text: String) throws(ConfigError) -> Double {
        let number = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              number.filter({ $0 == "." }).count <= 1, number != ".", let percent = Double(number),
              percent > 0, percent <= 100 else {
            throw ConfigError("--record-sample '\(text)': expected a percentage above 0 and at most 100, like 10%")
        }
        return percent
    }
}

/// Which sessions are recorded: a uniform draw per session below a
/// threshold (as `-m ADDR@P%` chooses a mirror's sessions), per worker.
public struct RecordSampling: Sendable {
    public let threshold: UInt64
    private var state: UInt64

    public init(percent: Double, seed: UInt64 = UInt64.random(in: 0...UInt64.max)) {
        threshold = MirrorSampling.threshold(percent: percent)
        state = seed
    }

    /// SplitMix64's next 32 bits against the threshold.
    public mutating func draw() -> Bool {
        if threshold >= MirrorSampling.everySession { return true }
        state &+= 0x9E37_79B9_7F4A_7C15
        var value = state
        value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
        value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
        value ^= value >> 31
        return (value >> 32) < threshold
    }
}
