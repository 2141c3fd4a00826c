import ArgumentParser
import Duplicator

/// Knobs whose defaults are what measured best (BENCHMARKS.md#tuning):
/// listed last in the help, still there.
struct TuningOptions: ParsableArguments {
    @Option(name: .customLong("slot-size"), parsing: .unconditional, help: "Bytes per buffer slot: the most one receive takes.")
    var slotSize = ByteSize(Defaults.slotSize)

    @Option(name: .customLong("mirror-batch-bytes"), parsing: .unconditional, help: "Send a mirror's queued bytes together once this many wait (or --mirror-batch-delay passed); 0: one send per receive, no batching.")
    var mirrorBatchBytes = ByteSize(Defaults.mirrorBatchBytes)

    @Option(name: .customLong("mirror-batch-delay"), parsing: .unconditional, help: "The longest a client byte waits for its mirror batch; a mirror sees bytes up to this much later (0: never wait).")
    var mirrorBatchDelay = Microseconds(Defaults.mirrorBatchDelayUs)

    @Option(name: .customLong("mirror-discard-batch"), parsing: .unconditional, help: "Discard a mirror's replies once this many bytes wait (its EOF and errors at once); 0: every reply.")
    var mirrorDiscardBatch = ByteSize(Defaults.mirrorDiscardBatchBytes)

    @Option(name: .customLong("zerocopy"), help: "Zero-copy sends from the registered pool: auto (sends of \(SizeParser.text(Defaults.zeroCopyBytesMin)) or more to peers not on this host, where the kernel has them), on (every send; an error where the kernel has none) or off.")
    var zeroCopy: ZeroCopyMode = Defaults.zeroCopy

    @Option(name: .customLong("ring-mode"), help: "io_uring setup to try first: defer, coop or plain (falls back when refused).")
    var ringMode: Config.RingMode = .deferTaskrun

    @Option(name: .customLong("wait-batch"), parsing: .unconditional, help: "Completions to wait for per wakeup under load (1: every one).")
    var waitBatch: Int = Defaults.waitBatch

    @Option(name: .customLong("wait-batch-timeout"), parsing: .unconditional, help: "The longest --wait-batch waits before taking fewer.")
    var waitBatchTimeout = Microseconds(Defaults.waitBatchTimeoutUs)

    @Option(name: .customLong("accept-gathering"), help: "auto: new clients go to one worker while every worker is far from busy, and to all once one is busy; off: always spread by the kernel's hash.")
    var acceptGathering: AcceptGatheringMode = Defaults.acceptGathering

    func apply(to config: inout Config) {
        config.slotSize = slotSize.bytes
        config.mirrorBatchBytes = mirrorBatchBytes.bytes
        config.mirrorBatchDelayUs = mirrorBatchDelay.microseconds
        config.mirrorDiscardBatchBytes = mirrorDiscardBatch.bytes
        config.zeroCopy = zeroCopy
        config.ringMode = ringMode
        config.waitBatch = waitBatch
        config.acceptGathering = acceptGathering
        config.waitBatchTimeoutUs = waitBatchTimeout.microseconds
    }
}
