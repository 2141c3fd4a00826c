import Glibc
import Platform
import Ring

/// `ReplayIO` on io_uring: each operation is an SQE tagged with its kind and
/// slot; the loop submits, waits (up to the next due session or tick), and
/// hands each completion to the engine. One thread, one ring.
public final class RingReplayDriver: ReplayIO {
    enum Kind: UInt8 { case connect = 1, send, receive, connectTimeout }

    private let ring: Ring
    private let target: UnsafeMutablePointer<sockaddr_storage>
    private let targetLength: socklen_t
    private let connectTimeout: RingTimeout

    /// - Throws: `RingError` where io_uring cannot run (the caller falls back to epoll).
    public init(target: SocketAddress, connectTimeoutMs: Int) throws {
        ring = try Ring(entries: 1024, completionEntries: 8192)
        self.target = .allocate(capacity: 1)
        self.target.initialize(to: target.storage)
        targetLength = target.length
        connectTimeout = RingTimeout(milliseconds: connectTimeoutMs)
    }

    deinit { target.deallocate() }

    public var setupMode: String { ring.setupMode.rawValue }

    private func tag(_ kind: Kind, _ slot: Int) -> CompletionTag {
        CompletionTag(kind: kind.rawValue, leg: 0, generation: 0, session: UInt32(slot))
    }

    public func connect(slot: Int, fd: Int32) {
        target.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
            ring.prepareConnect(fd: fd, address: address, length: targetLength, tag: tag(.connect, slot),
                                timeout: connectTimeout, timeoutTag: tag(.connectTimeout, slot))
        }
    }

    public func send(slot: Int, fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) {
        ring.prepareSend(fd: fd, from: bytes, length: count, tag: tag(.send, slot))
    }

    public func receive(slot: Int, fd: Int32, into buffer: UnsafeMutableRawPointer, _ count: Int) {
        ring.prepareRecv(fd: fd, into: buffer, length: count, tag: tag(.receive, slot))
    }

    /// Runs `engine` until every session is done; `progress` is called about once a second.
    public func run(_ engine: ReplayEngine<RingReplayDriver>, progress: (ReplayEngine<RingReplayDriver>) -> Void) throws {
        engine.io = self
        var lastProgressUs = MonotonicClock.nowMicros()
        while !engine.isDone {
            var nowUs = MonotonicClock.nowMicros()
            engine.startDue(nowUs: nowUs)
            // Wake for the next due session, or at least every 10 ms for the turn timeouts.
            let waitUs = min(engine.nextDueUs(nowUs: nowUs) ?? 10_000, 10_000)
            if engine.isDone { break }
            try ring.submitAndWait(count: 1, timeoutNanoseconds: Int64(max(waitUs, 50)) * 1000)
            while true {
                let count = ring.reap()
                if count == 0 { break }
                nowUs = MonotonicClock.nowMicros()
                for index in 0..<count {
                    let completion = ring.completion(at: index)
                    let slot = Int(completion.tag.session)
                    switch Kind(rawValue: completion.tag.kind) {
                    case .connect: engine.connected(slot: slot, result: completion.result, nowUs: nowUs)
                    case .send: engine.sent(slot: slot, result: completion.result, nowUs: nowUs)
                    case .receive: engine.received(slot: slot, result: completion.result, nowUs: nowUs)
                    case .connectTimeout, nil: break
                    }
                }
                if count < ring.reapBatchMax { break }
            }
            nowUs = MonotonicClock.nowMicros()
            engine.tick(nowUs: nowUs)
            if nowUs - lastProgressUs >= 1_000_000 {
                lastProgressUs = nowUs
                progress(engine)
            }
        }
        ring.submit()
    }
}
