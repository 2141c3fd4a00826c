import Glibc
import Platform
import Synchronization

/// `--record-dir`: writes each recorded session as a pcapng file (the dump
/// encoder, `Pcapng`: the client's bytes and main's replies as one TCP
/// conversation, the client's real address and main's, the times the
/// proxy saw the bytes) on its own thread, so that a slow disk never slows
/// a worker. As `DumpWriter`: workers hand requests over through a queue
/// bounded in bytes without waiting; files are mode 0600 (production data)
/// and O_EXCL.
///
/// Bounds: `--record-bytes` per session and direction (in `SessionRecordTap`),
/// and `--record-max-bytes` for what this process writes into the
/// directory: once the next file would pass it, recording stops (every
/// later session is counted `skipped_limit`, no file is ever removed: what
/// was recorded is kept for the operator to move away). A failed write
/// (a full disk) is counted, its file removed, and logged once until a
/// write succeeds again; the proxy keeps serving.
public final class RecordWriter: RecordSink, @unchecked Sendable {
    public enum Result: Int, CaseIterable, Sendable {
        case written, sampledOut, skippedLimit, droppedQueue, failed
        public var label: String {
            switch self {
            case .written: "written"
            case .sampledOut: "sampled_out"
            case .skippedLimit: "skipped_limit"
            case .droppedQueue: "dropped_queue"
            case .failed: "failed"
            }
        }
    }

    public let directory: String
    public let directoryBytesMax: Int
    public let queueBytesMax: Int
    public let problems: ProblemLog?
    /// Main's address: the server's end of every conversation.
    private let main: ProxyAddress
    private let counts = Mutex([UInt64](repeating: 0, count: Result.allCases.count))
    private let sampledOutCount = Atomic<UInt64>(0)
    private let truncatedBytes = Atomic<UInt64>(0)
    /// Bytes written into the directory so far; once over the bound, recording has stopped.
    private let bytesWritten = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    private let sequence = Atomic<UInt64>(0)
    private let wallOffsetUs: UInt64
    /// A failure was logged and no write has succeeded since: not logged again.
    private var failureLogged = false
    private let writer = BackgroundWriter<RecordRequest>()

    public init(config: RecordingConfig, main: ProxyAddress, queueBytesMax: Int = Defaults.dumpQueueBytes,
                problems: ProblemLog? = nil) throws(ConfigError) {
        try config.validate()
        let directory = config.directory
        try BackgroundWriter<RecordRequest>.checkDirectory(directory, flag: "--record-dir")
        self.directory = directory
        directoryBytesMax = config.directoryBytesMax
        self.queueBytesMax = queueBytesMax
        self.problems = problems
        self.main = main
        wallOffsetUs = BackgroundWriter<RecordRequest>.wallClockOffsetUs()
    }

    public func start() throws(ProxyError) {
        try writer.start("dup-record") { [self] request in write(request) }
    }

    /// Writes what is queued, then ends the thread.
    public func stop() { writer.stop() }

    public func count(_ result: Result) -> UInt64 {
        result == .sampledOut ? sampledOutCount.load(ordering: .relaxed) : counts.withLock { $0[result.rawValue] }
    }

    /// Bytes past `--record-bytes` left out of the files written.
    public var truncated: UInt64 { truncatedBytes.load(ordering: .relaxed) }

    public func sampledOut() { sampledOutCount.wrappingAdd(1, ordering: .relaxed) }

    /// On a worker thread: never blocks on the disk (the lock is held only to append).
    public func submit(_ request: RecordRequest) {
        guard !stopped.load(ordering: .relaxed) else {
            bump(.skippedLimit)
            return
        }
        if !writer.offer(request, bytes: request.memoryBytes, queueBytesMax: queueBytesMax) {
            bump(.droppedQueue)
            problems?.dropped(.recordDropped)
        }
    }

    private func bump(_ result: Result) {
        counts.withLock { $0[result.rawValue] += 1 }
    }

    /// The file's bytes for `request` (also what the tests read).
    public func fileBytes(_ request: RecordRequest) -> [UInt8] {
        Self.fileBytes(request, main: main, wallOffsetUs: wallOffsetUs)
    }

    public static func fileBytes(_ request: RecordRequest, main: ProxyAddress, wallOffsetUs: UInt64) -> [UInt8] {
        let client = request.clientAddresses?.source
            ?? [UInt8]([192, 0, 2, 1]).withUnsafeBytes { ProxyAddress(family: .ipv4, networkBytes: $0, port: 1) }
        let conversation = Pcapng.Conversation(
            client: client, server: main, clientSegments: request.client.segments(offsetUs: wallOffsetUs),
            serverSegments: request.main.segments(offsetUs: wallOffsetUs),
            startUs: request.startUs &+ wallOffsetUs, endUs: request.endUs &+ wallOffsetUs)
        let comment = "swift-duplicator --record-dir: one session, the client with main (its handshake and FINs are "
            + "synthetic); bytes not recorded (past --record-bytes): client \(request.client.droppedBytes), "
            + "main \(request.main.droppedBytes)"
        return Pcapng.file([conversation], comment: comment)
    }

    private func write(_ request: RecordRequest) {
        let bytes = fileBytes(request)
        guard bytesWritten.load(ordering: .relaxed) + bytes.count <= directoryBytesMax else {
            // Recording stops here: later sessions are not written either.
            stopped.store(true, ordering: .relaxed)
            bump(.skippedLimit)
            return
        }
        let number = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        let path = "\(directory)/record-\(getpid())-\(number).pcapng"
        let failure = BackgroundWriter<RecordRequest>.writeNewFile(path: path, bytes: bytes)
        guard failure == 0 else {
            failed(path: path, errno: failure)
            return
        }
        bytesWritten.wrappingAdd(bytes.count, ordering: .relaxed)
        bump(.written)
        truncatedBytes.wrappingAdd(request.client.droppedBytes + request.main.droppedBytes, ordering: .relaxed)
        failureLogged = false
    }

    private func failed(path: String, errno: Int32) {
        bump(.failed)
        if !failureLogged {
            failureLogged = true
            problems?.writeFailed(.recordWriteFailure, path: path, errno: errno)
        }
    }
}
