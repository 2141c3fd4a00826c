import Benchmark
import Ring

// The reference counting of one client receive through the pool, as the
// session does it: `adopt` when the kernel hands out the slot, one `retain`
// per mirror backlog, one `release` per completed send; the last release says
// the slot may be lent again. Each iteration runs 1,000,000 cycles (scaling
// factor mega): the figures shown with `*` are per cycle.

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 2,
        scalingFactor: .mega,
        maxDuration: .seconds(2),
        maxIterations: 1_000
    )

    for mirrors in [0, 1, 4] {
        Benchmark("BufferPool adopt/retain/release", configuration: .init(tags: ["mirrors": "\(mirrors)"])) { benchmark in
            let pool: BufferPool
            do {
                pool = try BufferPool(slotSize: 16 << 10, slotCount: 1024)
            } catch {
                fatalError("BufferPool failed: \(error)")
            }
            let slotMask = UInt32(pool.slotCount - 1)
            var freed = 0
            benchmark.startMeasurement()
            for iteration in benchmark.scaledIterations {
                let slot = UInt32(truncatingIfNeeded: iteration) & slotMask
                pool.adopt(slot)
                for _ in 0..<mirrors { pool.retain(slot) }
                for _ in 0..<mirrors { if pool.release(slot) { freed &+= 1 } }
                if pool.release(slot) { freed &+= 1 }
            }
            benchmark.stopMeasurement()
            precondition(freed == benchmark.scaledIterations.count && pool.inUse == 0)
            blackHole(freed)
        }
    }

    // The control for the zeros above: one heap allocation per cycle must
    // show as 1,000,000 mallocs per iteration, or the counter is not working.
    Benchmark("Control: one Array allocation per cycle") { benchmark in
        benchmark.startMeasurement()
        for iteration in benchmark.scaledIterations {
            var bytes = [UInt8](repeating: 0, count: 64)
            bytes[0] = UInt8(truncatingIfNeeded: iteration)
            blackHole(bytes)
        }
        benchmark.stopMeasurement()
    }
}
