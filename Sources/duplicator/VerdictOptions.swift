import ArgumentParser
import Duplicator

/// `--compare` and the dumps of what differs (docs/verdicts.md).
struct VerdictOptions: ParsableArguments {
    @Flag(name: .customLong("compare"), help: "Compare each mirror's reply stream with main's, per session: match, diverged (at which offset), shorter, longer or incomplete (in the metrics and the --stats-interval line).")
    var compare = false

    @Option(name: .customLong("compare-window"), parsing: .unconditional, help: "With --compare: memory per session and mirror for the reply stream that runs ahead: 7/8 kept as bytes, the rest as digests of 4KiB blocks that reach 64 times the window; further apart is 'incomplete'. Reserved per session at start, resident only where a mirror lags.")
    var compareWindow = ByteSize(Defaults.compareWindowBytes)

    @Option(name: .customLong("dump-dir"), help: "With --compare: write one pcapng file (mode 0600: production data) per session and mirror whose replies diverged, were shorter or longer, holding client<->main and client<->mirror as two TCP conversations.")
    var dumpDir: String?

    @Option(name: .customLong("dump-bytes"), parsing: .unconditional, help: "With --dump-dir: bytes recorded per session and direction; later bytes are counted, not kept.")
    var dumpBytes = ByteSize(Defaults.dumpBytes)

    @Option(name: .customLong("dump-max-files"), parsing: .unconditional, help: "With --dump-dir: files written at most; later dumps are counted as skipped_limit.")
    var dumpMaxFiles: Int = Defaults.dumpMaxFiles

    @Option(name: .customLong("dump-queue"), parsing: .unconditional, help: "With --dump-dir: bytes of dumps waiting for the disk at most; a dump beyond is dropped, counted (dropped_queue) and logged.")
    var dumpQueue = ByteSize(Defaults.dumpQueueBytes)

    func apply(to config: inout Config) {
        config.compare = compare
        config.compareWindowBytes = compareWindow.bytes
        config.dumpDirectory = dumpDir
        config.dumpBytes = dumpBytes.bytes
        config.dumpMaxFiles = dumpMaxFiles
        config.dumpQueueBytes = dumpQueue.bytes
    }
}
