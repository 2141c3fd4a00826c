import Logging
import Platform

/// What a worker is started with, whichever its backend (`IOUringWorker`,
/// `EpollWorker`): the configuration, the targets' addresses and the loop
/// guard, what it shares with the other workers (the mirrors' health, every
/// worker's counters, the control block, the dump writer), its own counters,
/// listeners and logger. Built once per worker thread by `Proxy`.
struct WorkerEnvironment: Sendable {
    let config: Config
    /// Main's address, then each mirror slot's.
    let targets: [SocketAddress]
    let loopGuard: LoopGuard
    let mirrorHealth: MirrorHealth
    let listenerFDs: [Int32]
    let stats: WorkerStats
    /// Every worker's counters, this one's among them (the mirror health log's).
    let allStats: [WorkerStats]
    let control: WorkerControl
    let logger: Logger
    /// `--dump-dir`: where sessions hand the pairs to dump.
    var dumpSink: DumpSink? = nil
    /// `--record-dir`: where sessions hand their recordings.
    var recordSink: RecordSink? = nil
    /// `--accept-gathering auto`: what each tick reports its busy fraction to.
    var acceptGathering: AcceptGathering? = nil
}
