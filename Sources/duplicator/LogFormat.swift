import Glibc
import Logging

/// The log's one format: `2026-01-02T03:04:05+0000 warning duplicator: text`.
/// swift-log's `StreamLogHandler` adds the Swift module a line came from
/// (`[duplicator]` from the command, `[Duplicator]` from the engine): two
/// labels for one program, which a grep for either misses half of.
struct DuplicatorLogHandler: LogHandler {
    /// The process's one level, changed in place by a reload (`LogLevelControl`).
    var logLevel: Logger.Level {
        get { LogLevelControl.shared.current }
        set { LogLevelControl.shared.current = newValue }
    }
    var metadata: Logger.Metadata = [:]
    private let label: String

    init(label: String) { self.label = label }

    /// Every logger of the process writes through this handler, as "duplicator", at `level`.
    static func bootstrap(level: Logger.Level) {
        LogLevelControl.shared.current = level
        LoggingSystem.bootstrap { _ in DuplicatorLogHandler(label: "duplicator") }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        let metadataText = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: " ")
        let line = "\(Self.timestamp()) \(event.level) \(label):\(metadataText) \(event.message)\n"
        // One write per line, so that lines of several threads never interleave;
        // a closed stderr fails quietly (SIGPIPE is ignored).
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { _ = write(2, $0.baseAddress, $0.count) }
    }

    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        guard localtime_r(&now, &parts) != nil else { return "<unknown>" }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buffer in
            strftime(buffer.baseAddress!, 64, "%Y-%m-%dT%H:%M:%S%z", &parts)
            return String(cString: buffer.baseAddress!)
        }
    }
}
