import Duplicator
import Glibc
import Platform

/// `duplicator replay` without its flags' parsing: read the captures, pick
/// the IO backend (io_uring, or epoll where it cannot run, saying why),
/// run the engine, and report.
public enum Replayer {
    public enum Backend: String, Sendable, CaseIterable { case auto, ioUring = "io_uring", epoll }

    /// What the run needs beyond `ReplayOptions`.
    public struct Run {
        public var paths: [String]
        public var options: ReplayOptions
        public var serverPort: UInt16?
        public var backend = Backend.auto
        public var dumpDirectory: String?
        /// Lines for the operator (warnings, the fallback, progress): stderr in the CLI.
        public var note: (String) -> Void = { _ in }
        public var progressEnabled = true

        public init(paths: [String], options: ReplayOptions) {
            self.paths = paths
            self.options = options
        }
    }

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    public static func run(_ run: Run) throws(Failure) -> ReplayReport {
        let input: ReplayInput
        do { input = try ReplayInput.load(paths: run.paths, serverPort: run.serverPort) } catch { throw Failure(error.message) }
        for warning in input.warnings { run.note(warning) }
        guard !input.sessions.isEmpty else {
            let files = run.paths.count == 1 ? run.paths[0] : "\(run.paths.count) files"
            if input.counts.tcpSegments == 0 { throw Failure("\(files): no TCP packets in \(input.counts.packets) packets") }
            let port = run.serverPort.map { " to port \($0)" } ?? ""
            throw Failure("\(files): no TCP session\(port) to replay (\(input.counts.skippedSessions) skipped)")
        }
        var dumps: DumpWriter?
        if let directory = run.dumpDirectory {
            let target = ProxyAddress(run.options.target)
            let recorded = input.sessions[0].server
            do {
                dumps = try DumpWriter(directory: directory, maxFiles: Defaults.dumpMaxFiles, servers: [recorded, target],
                                       mirrorNames: ["target"])
            } catch { throw Failure(error.message) }
            do { try dumps?.start() } catch { throw Failure(error.message) }
        }
        defer { dumps?.stop() }
        let startUs = MonotonicClock.nowMicros()
        let cpuStart = processCPUSeconds()
        let engine: (counts: ReplayCounts, latency: (Double) -> Double, samples: UInt64)
        let backendName: String
        let wantRing = run.backend != .epoll
        var ring: RingReplayDriver?
        if wantRing {
            do {
                ring = try RingReplayDriver(target: run.options.target, connectTimeoutMs: max(run.options.turnTimeoutMs, 1000))
            } catch {
                if run.backend == .ioUring { throw Failure("--backend io_uring: \(error)") }
                run.note("io_uring cannot run here (\(error)): replaying on epoll")
            }
        }
        if let ring {
            backendName = "io_uring"
            let replay = ReplayEngine<RingReplayDriver>(sessions: input.sessions, options: run.options, nowUs: startUs)
            replay.dumps = dumps
            do {
                try ring.run(replay) { engine in
                    if run.progressEnabled { run.note(ReplayReport.progressLine(engine, elapsedSeconds: elapsed(since: startUs))) }
                }
            } catch {
                throw Failure("replay: \(error)")
            }
            engine = (replay.counts, { replay.latencyMicros(percentile: $0) }, replay.latencyCount)
        } else {
            backendName = "epoll"
            let driver: EpollReplayDriver
            do {
                driver = try EpollReplayDriver(target: run.options.target, connectTimeoutMs: max(run.options.turnTimeoutMs, 1000))
            } catch { throw Failure("replay: \(error)") }
            let replay = ReplayEngine<EpollReplayDriver>(sessions: input.sessions, options: run.options, nowUs: startUs)
            replay.dumps = dumps
            driver.run(replay) { engine in
                if run.progressEnabled { run.note(ReplayReport.progressLine(engine, elapsedSeconds: elapsed(since: startUs))) }
            }
            engine = (replay.counts, { replay.latencyMicros(percentile: $0) }, replay.latencyCount)
        }
        let report = ReplayReport(counts: engine.counts, skipped: input.counts.skippedSessions,
                                  durationSeconds: elapsed(since: startUs), cpuSeconds: processCPUSeconds() - cpuStart,
                                  p50Micros: engine.latency(50), p90Micros: engine.latency(90), p99Micros: engine.latency(99),
                                  p999Micros: engine.latency(99.9), latencySamples: engine.samples,
                                  compared: run.options.compare, backend: backendName)
        if engine.counts.connectFailed == engine.counts.sessions {
            throw Failure("\(ProxyAddress(run.options.target)): every connect failed: \(errorDescription(engine.counts.firstConnectErrno))")
        }
        return report
    }

    static func elapsed(since startUs: UInt64) -> Double {
        Double(MonotonicClock.nowMicros() - startUs) / 1e6
    }

    /// This thread's CPU time: the replayer is one thread.
    static func processCPUSeconds() -> Double {
        Double(MonotonicClock.threadCPUNanos()) / 1e9
    }
}

extension ProxyAddress {
    /// The address of a resolved socket address (IPv4 or IPv6).
    init(_ address: SocketAddress) {
        var storage = address.storage
        self = withUnsafeBytes(of: &storage) { raw in
            if Int32(address.storage.ss_family) == AF_INET6 {
                let port = UInt16(raw[2]) << 8 | UInt16(raw[3])
                return ProxyAddress(family: .ipv6, networkBytes: UnsafeRawBufferPointer(rebasing: raw[8..<24]), port: port)
            }
            let port = UInt16(raw[2]) << 8 | UInt16(raw[3])
            return ProxyAddress(family: .ipv4, networkBytes: UnsafeRawBufferPointer(rebasing: raw[4..<8]), port: port)
        }
    }
}
