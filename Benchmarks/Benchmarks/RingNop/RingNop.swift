import Benchmark
import Ring

// A batch of N NOPs through the real io_uring: N SQEs prepared, one
// submit-and-wait for all N, then reaped in batches with one CQ-head advance
// each. It measures the driver's own cost per operation (SQE acquisition,
// tagging, one io_uring_enter, reaping) with no socket work behind it.
//
// The ring is made inside the closure, before the measured part: with
// SINGLE_ISSUER | DEFER_TASKRUN only the thread that created a ring may
// submit to it, and the closure's thread is the benchmark runner's choice.
// Each iteration runs 1,000 batches (scaling factor kilo), so the figures
// shown with `*` are per batch.

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 2,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000
    )

    for batch in [1, 16, 256] {
        Benchmark("Ring NOP submit+reap", configuration: .init(tags: ["batch": "\(batch)"])) { benchmark in
            let ring: Ring
            do {
                ring = try Ring(entries: 256, completionEntries: 1024)
            } catch {
                fatalError("Ring setup failed: \(error)")
            }
            let tag = CompletionTag(kind: 1, leg: 0, generation: 1, session: 7)
            var checksum: UInt64 = 0
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                for _ in 0..<batch { ring.prepareNop(tag: tag) }
                do {
                    try ring.submitAndWait(count: UInt32(batch))
                } catch {
                    fatalError("submitAndWait failed: \(error)")
                }
                var reaped = 0
                while reaped < batch {
                    let count = ring.reap()
                    for index in 0..<count {
                        let completion = ring.completion(at: index)
                        checksum &+= completion.tag.rawValue &+ UInt64(bitPattern: Int64(completion.result))
                    }
                    reaped += count
                    if count == 0 { try? ring.submitAndWait(count: 1) }
                }
            }
            benchmark.stopMeasurement()
            blackHole(checksum)
        }
    }
}
