import Benchmark
import Duplicator
import Ring

// The session state machine without sockets: one `Session` driven through a
// scripted `SessionIO` for the seed's traffic, one 1 KiB client message and
// its 1 KiB echo per step, with M mirrors. Per client message the session
// takes 4 + 2M completions, each looked up through `SessionTable` by its tag
// as the worker does:
//
//   client recv (a slot lent by the fake) -> sends to main and each mirror
//   main send done, each mirror send done (the last one recycles the slot)
//   main recv (the echo, another slot) -> send to the client
//   client send done (recycles that slot), each mirror discard done
//
// Each iteration runs 1,000 messages (scaling factor kilo): figures shown
// with `*` are per client message. `mallocCountTotal` is per 1,000 messages
// and should be 0: the completion path does not allocate.
//
// `Session.handle` is generic over the IO and not inlinable, so from this
// module it runs through the protocol's witness table; inside the proxy it
// is specialised for the worker's IO. The figures here are an upper bound.

/// Stands in for the kernel: remembers the one operation of each kind asked
/// for on each leg, and lends pool slots from a stack as a provided buffer
/// ring would. Fixed storage; nothing is allocated after init.
final class ScriptedIO: SessionIO {
    let pool: BufferPool
    let legCapacity = 8
    /// Pending tags by leg (0: none; a real tag's kind is never 0).
    let pendingRecv: UnsafeMutablePointer<UInt64>
    let pendingSend: UnsafeMutablePointer<UInt64>
    let pendingSendLength: UnsafeMutablePointer<Int32>
    let pendingDiscard: UnsafeMutablePointer<UInt64>
    let pendingConnect: UnsafeMutablePointer<UInt64>
    private let freeSlots: UnsafeMutablePointer<UInt32>
    private var freeCount: Int
    private var nextFD: Int32 = 100

    init(pool: BufferPool) {
        self.pool = pool
        pendingRecv = .allocate(capacity: legCapacity)
        pendingSend = .allocate(capacity: legCapacity)
        pendingSendLength = .allocate(capacity: legCapacity)
        pendingDiscard = .allocate(capacity: legCapacity)
        pendingConnect = .allocate(capacity: legCapacity)
        for pointer in [pendingRecv, pendingSend, pendingDiscard, pendingConnect] {
            pointer.initialize(repeating: 0, count: legCapacity)
        }
        pendingSendLength.initialize(repeating: 0, count: legCapacity)
        freeSlots = .allocate(capacity: pool.slotCount)
        for slot in 0..<pool.slotCount { freeSlots[slot] = UInt32(pool.slotCount - 1 - slot) }
        freeCount = pool.slotCount
    }

    deinit {
        for pointer in [pendingRecv, pendingSend, pendingDiscard, pendingConnect] { pointer.deallocate() }
        pendingSendLength.deallocate()
        freeSlots.deallocate()
    }

    /// A free slot, as the kernel would pick one when data arrives.
    func lendSlot() -> UInt32 {
        precondition(freeCount > 0, "pool dry")
        freeCount -= 1
        return freeSlots[freeCount]
    }

    func openSocket(for leg: Leg) -> Int32 {
        nextFD += 1
        return nextFD
    }

    func connect(fd: Int32, leg: Leg, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        pendingConnect[Int(tag.leg)] = tag.rawValue
    }

    func recv(fd: Int32, tag: CompletionTag) { pendingRecv[Int(tag.leg)] = tag.rawValue }

    func discard(fd: Int32, tag: CompletionTag) { pendingDiscard[Int(tag.leg)] = tag.rawValue }

    func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag) {
        pendingSend[Int(tag.leg)] = tag.rawValue
        pendingSendLength[Int(tag.leg)] = Int32(length)
    }

    func send(fd: Int32, from bytes: UnsafeRawPointer, length: Int, tag: CompletionTag) {
        pendingSend[Int(tag.leg)] = tag.rawValue
        pendingSendLength[Int(tag.leg)] = Int32(length)
    }

    func addresses(fd: Int32) -> ProxyAddresses? { nil }

    func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag) {
        pendingSend[Int(tag.leg)] = tag.rawValue
        pendingSendLength[Int(tag.leg)] = Int32(length)
    }

    func wake(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {}
    func discardInBatches(fd: Int32) {}

    func shutdownWrite(fd: Int32, tag: CompletionTag) {}
    func cancel(fd: Int32, tag: CompletionTag) {}
    func close(fd: Int32, tag: CompletionTag) {}
    func unsentBytes(fd: Int32) -> Int { 0 }

    func recycle(slot: UInt32) {
        freeSlots[freeCount] = slot
        freeCount += 1
    }


    func waitForBuffers(session index: UInt32) {
        fatalError("the pool ran dry in a benchmark that never holds more than a few slots")
    }
}

/// One session and the fake kernel under it.
final class SessionDriver {
    let io: ScriptedIO
    let table: SessionTable
    let mirrors: Int
    let messageBytes: Int32

    init(mirrors: Int, messageBytes: Int32) throws {
        self.mirrors = mirrors
        self.messageBytes = messageBytes
        let pool = try BufferPool(slotSize: 16 << 10, slotCount: 64)
        let context = SessionContext(limits: SessionLimits(mirrorCount: mirrors,
                                                           mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0), pool: pool,
                                     stats: WorkerStats(mirrorCount: mirrors))
        io = ScriptedIO(pool: pool)
        table = try SessionTable(capacity: 4, context: context)
        guard let session = table.take() else { fatalError("empty session table") }
        session.start(clientFD: 50, io: io)
        complete(io.pendingConnect, leg: .main, result: 0)
        for mirror in 0..<mirrors {
            complete(io.pendingConnect, leg: .mirror(mirror), result: 0)
        }
    }

    /// Delivers the completion of the operation pending on `leg` in `pending`.
    @inline(__always)
    func complete(_ pending: UnsafeMutablePointer<UInt64>, leg: Leg, result: Int32, slot: UInt32? = nil) {
        let raw = pending[leg.index]
        precondition(raw != 0, "no operation pending on leg \(leg)")
        pending[leg.index] = 0
        let tag = CompletionTag(rawValue: raw)
        guard let kind = OperationKind(rawValue: tag.kind) else { fatalError("unknown completion") }
        if case .stale = table.deliver(kind, tag: tag, result: result, selectedBuffer: slot, io: io) {
            fatalError("stale completion")
        }
    }

    /// One client message through the proxy and its echo back.
    @inline(__always)
    func message() {
        complete(io.pendingRecv, leg: .client, result: messageBytes, slot: io.lendSlot())
        complete(io.pendingSend, leg: .main, result: io.pendingSendLength[Leg.main.index])
        for mirror in 0..<mirrors {
            complete(io.pendingSend, leg: .mirror(mirror), result: io.pendingSendLength[Leg.mirror(mirror).index])
        }
        complete(io.pendingRecv, leg: .main, result: messageBytes, slot: io.lendSlot())
        complete(io.pendingSend, leg: .client, result: io.pendingSendLength[Leg.client.index])
        for mirror in 0..<mirrors {
            complete(io.pendingDiscard, leg: .mirror(mirror), result: messageBytes)
        }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 2,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 10_000
    )

    for mirrors in [0, 1, 4] {
        Benchmark("Session 1 KiB message+echo", configuration: .init(tags: ["mirrors": "\(mirrors)"])) { benchmark in
            let driver: SessionDriver
            do {
                driver = try SessionDriver(mirrors: mirrors, messageBytes: 1024)
            } catch {
                fatalError("setup failed: \(error)")
            }
            driver.message() // warm: every queue and pending slot touched once
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { driver.message() }
            benchmark.stopMeasurement()
            blackHole(driver)
        }
    }
}
