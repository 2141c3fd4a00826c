import ArgumentParser
import Duplicator

/// `--record-dir` and its bounds: sessions written as pcapng files for
/// `duplicator replay` (docs/replay.md). Config-file keys under the same
/// names; a reload cannot change them (the writer starts with the process).
struct RecordingOptions: ParsableArguments {
    @Option(name: .customLong("record-dir"), help: "Write every session (or --record-sample of them) as a pcapng file here (mode 0600): the client's bytes and main's replies as one TCP conversation, for duplicator replay.")
    var recordDir: String?

    @Option(name: .customLong("record-sample"), help: "With --record-dir: the share of sessions recorded, e.g. 10%.")
    var recordSample: String = "100%"

    @Option(name: .customLong("record-bytes"), parsing: .unconditional, help: "With --record-dir: what a session keeps of each direction; later bytes are counted, not recorded.")
    var recordBytes: String = SizeParser.text(Defaults.recordBytes)

    @Option(name: .customLong("record-max-bytes"), parsing: .unconditional, help: "With --record-dir: the most this process writes there; once the next file would pass it, recording stops (counted as skipped_limit; no file is removed).")
    var recordMaxBytes: String = SizeParser.text(Defaults.recordMaxBytes)

    /// The recording's settings, or nil without `--record-dir`.
    func config() throws(ConfigError) -> RecordingConfig? {
        guard let recordDir else { return nil }
        var config = RecordingConfig(directory: recordDir)
        config.samplePercent = try RecordingConfig.percent(recordSample)
        config.bytesPerDirection = try SizeParser.bytes(recordBytes)
        config.directoryBytesMax = try SizeParser.bytes(recordMaxBytes)
        try config.validate()
        return config
    }
}
