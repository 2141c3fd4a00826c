import Glibc
import Platform
import Synchronization

/// A TCP server for tests and benchmarks: echo, sink, stall or blackhole (see
/// `TestServerMode`), on one thread with epoll, so it stays cheap with thousands of
/// connections. For every connection it keeps a `ConnectionRecord`.
///
/// Controls and counters are safe from any thread. Call `stop()` when done: it joins
/// the thread and closes every descriptor the server opened (deinit does it too).
public final class TestServer: Sendable {
    public let address: LoadAddress
    public let mode: TestServerMode

    static let listenQueueLength: Int32 = 4096

    private let shared: TestServerShared
    private let lifecycle = Mutex<Lifecycle>(.idle)

    private enum Lifecycle {
        case idle
        case running(thread: NativeThread, wakeup: WakeupEvent, bound: SocketAddress)
        case stopped(bound: SocketAddress?)
    }

    /// - Parameters:
    ///   - computesDigests: keep an FNV-1a digest of each connection's received bytes.
    ///     Hashing costs about 1.3 ns a byte, the largest part of the server's own CPU
    ///     time; turn it off when only rates matter.
    ///   - retainedClosedRecordsMax: how many records of closed connections to keep (the
    ///     oldest are forgotten beyond it, so a long run stays bounded).
    public init(address: LoadAddress, mode: TestServerMode = .echo, computesDigests: Bool = true,
                retainedClosedRecordsMax: Int = 100_000) {
        self.address = address
        self.mode = mode
        shared = TestServerShared(computesDigests: computesDigests, retainedClosedRecordsMax: max(1, retainedClosedRecordsMax))
    }

    deinit {
        stop()
    }

    /// Binds, listens and starts the server thread. Throws `LoadAddressError`,
    /// `SystemCallError` (e.g. the port is in use) or `TestServerError`.
    public func start() throws {
        try lifecycle.withLock { state throws in
            guard case .idle = state else { throw TestServerError.alreadyStarted }
            let target = try address.resolve(for: .listen)
            let loop = try TestServerLoop(
                mode: mode, shared: shared,
                listenerFd: try SocketCalls.listen(at: target, queueLength: mode == .blackhole ? 0 : Self.listenQueueLength))
            let bound = loop.boundAddress
            let wakeup = loop.wakeup
            // On failure the closure, and with it the loop and its descriptors, is released.
            let thread = try NativeThread.start(name: "testsrv-\(mode)") { loop.run() }
            state = .running(thread: thread, wakeup: wakeup, bound: bound)
        }
    }

    /// Stops the thread, closes every connection and the listener. Idempotent.
    public func stop() {
        lifecycle.withLock { state in
            switch state {
            case .idle:
                state = .stopped(bound: nil)
            case .running(let thread, let wakeup, let bound):
                shared.stopRequested.store(true, ordering: .releasing)
                wakeup.signal()
                thread.join()
                state = .stopped(bound: bound)
            case .stopped:
                break
            }
        }
    }

    /// The address the listener is bound to, once started.
    public var boundAddress: SocketAddress? {
        lifecycle.withLock { state in
            switch state {
            case .idle: nil
            case .running(_, _, let bound): bound
            case .stopped(let bound): bound
            }
        }
    }

    /// The bound port (the one the kernel chose for port 0); 0 before start().
    public var boundPort: UInt16 { boundAddress?.port ?? 0 }

    /// One record per accepted connection, in accept order, closed ones included (up to
    /// `retainedClosedRecordsMax` of those).
    public func connectionRecords() -> [ConnectionRecord] { shared.snapshot() }

    public var totalBytesReceived: UInt64 { shared.totalBytesReceived.load(ordering: .relaxed) }
    public var totalBytesSent: UInt64 { shared.totalBytesSent.load(ordering: .relaxed) }
    /// '\n' bytes received: requests, for line-based load such as LoadClient's.
    public var totalLinesReceived: UInt64 { shared.totalLinesReceived.load(ordering: .relaxed) }
    public var connectionsAccepted: UInt64 { shared.connectionsAccepted.load(ordering: .relaxed) }
    public var connectionsOpen: Int { shared.connectionsOpen.load(ordering: .relaxed) }
    /// accept() failures other than EAGAIN (e.g. out of descriptors); the listener then
    /// pauses for a moment instead of spinning.
    public var acceptFailures: UInt64 { shared.acceptFailures.load(ordering: .relaxed) }
}

public enum TestServerError: Error, Sendable, Equatable, CustomStringConvertible {
    case alreadyStarted

    public var description: String {
        switch self {
        case .alreadyStarted: "the test server was already started (a TestServer runs once)"
        }
    }
}
