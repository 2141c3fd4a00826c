import Glibc
import Platform
import Synchronization

/// `--dump-dir`: writes the pcapng dumps (`DumpRequest`) on its own
/// thread, so that a slow disk never slows a worker. Workers hand requests
/// over through a queue bounded in bytes (`--dump-queue`) without waiting:
/// when it is full, or `--dump-max-files` files are already taken, the
/// request is dropped, counted and logged (`ProblemLog`). A bound in
/// requests (it was 16) dropped a quarter of the dumps of a burst of
/// small ones on a healthy disk; a bound in bytes takes a burst of small
/// dumps whole and still bounds what large ones hold. Files are created
/// with mode 0600 (they hold production data) and O_EXCL (never over
/// another file).
public final class DumpWriter: DumpSink, @unchecked Sendable {
    public enum Result: Int, CaseIterable, Sendable {
        case written, skippedLimit, droppedQueue, failed
        public var label: String {
            switch self {
            case .written: "written"
            case .skippedLimit: "skipped_limit"
            case .droppedQueue: "dropped_queue"
            case .failed: "failed"
            }
        }
    }

    /// Bytes of requests waiting for the writer at most (`--dump-queue`);
    /// one request is always taken when the queue is empty, whatever its size.
    public var queueBytesMax: Int { queueBytesLimit.load(ordering: .relaxed) }
    private let queueBytesLimit: Atomic<Int>
    /// Where failed and dropped dumps are told, for the log; nil: counted only.
    public let problems: ProblemLog?

    /// Where the files go: a reload may change it, for the dumps written from then on.
    public var directory: String { directoryPath.withLock { $0 } }
    private let directoryPath: Mutex<String>
    /// Files written at most (`--dump-max-files`).
    public var maxFiles: Int { maxFilesLimit.load(ordering: .relaxed) }
    private let maxFilesLimit: Atomic<Int>
    /// Main's address, then each mirror slot's (the servers' ends of the
    /// conversations), and each slot's name: a reload that gives a free slot
    /// its mirror names it here (`follow(slotNames:slotAddresses:)`); a slot keeps
    /// its address for the life of the process, so a dump of an older
    /// session finds its own mirror.
    private let servers: Mutex<[ProxyAddress]>
    private let mirrorNames: Mutex<[String]>
    /// Per mirror and `Result.rawValue` (mirror * 4 + result); rare events, so a lock.
    private let counts: Mutex<[UInt64]>
    /// Per mirror: bytes past `--dump-bytes` in the dumps written, not kept.
    private let truncatedBytes: Mutex<[UInt64]>
    /// Files taken so far (a failed write keeps its place).
    private let filesTaken = Atomic<Int>(0)
    private let sequence = Atomic<UInt64>(0)
    /// The wall clock minus the session clock, in microseconds.
    private let wallOffsetUs: UInt64
    private let writer = BackgroundWriter<DumpRequest>()

    /// Checks that `directory` is a directory this process may write into.
    public init(directory: String, maxFiles: Int, servers: [ProxyAddress], mirrorNames: [String],
                queueBytesMax: Int = Defaults.dumpQueueBytes, problems: ProblemLog? = nil) throws(ConfigError) {
        try BackgroundWriter<DumpRequest>.checkDirectory(directory, flag: "--dump-dir")
        directoryPath = Mutex(directory)
        maxFilesLimit = Atomic(maxFiles)
        queueBytesLimit = Atomic(queueBytesMax)
        self.problems = problems
        self.servers = Mutex(servers)
        self.mirrorNames = Mutex(mirrorNames)
        counts = Mutex([UInt64](repeating: 0, count: mirrorNames.count * Result.allCases.count))
        truncatedBytes = Mutex([UInt64](repeating: 0, count: mirrorNames.count))
        wallOffsetUs = BackgroundWriter<DumpRequest>.wallClockOffsetUs()
    }

    public func start() throws(ProxyError) {
        try writer.start("dup-dumps") { [self] request in write(request) }
    }

    /// Writes what is queued, then ends the thread.
    public func stop() { writer.stop() }

    /// A reload's `--dump-max-files` and `--dump-queue`, for the dumps
    /// submitted from now on (the files already written count against the new bound).
    public func follow(maxFiles: Int, queueBytesMax: Int) {
        maxFilesLimit.store(maxFiles, ordering: .relaxed)
        queueBytesLimit.store(queueBytesMax, ordering: .relaxed)
    }

    /// A reload's `--dump-dir` (checked by then), for the dumps written from now on.
    func follow(directory: String) { directoryPath.withLock { $0 = directory } }

    /// A reload's mirror slots, per slot its mirror's name ("" while free)
    /// and address: a slot a reload gave its first mirror is named from then
    /// on (the counts were sized for every slot at start).
    func follow(slotNames: [String], slotAddresses: [ProxyAddress?]) {
        mirrorNames.withLock { names in
            for (slot, name) in zip(names.indices, slotNames) where !name.isEmpty { names[slot] = name }
        }
        servers.withLock { servers in
            for (slot, address) in zip(servers.indices.dropFirst(), slotAddresses) {
                if let address { servers[slot] = address }
            }
        }
    }

    public func count(mirror: Int, _ result: Result) -> UInt64 {
        counts.withLock { $0[mirror * Result.allCases.count + result.rawValue] }
    }

    public func truncated(mirror: Int) -> UInt64 { truncatedBytes.withLock { $0[mirror] } }

    /// On a worker thread: never blocks on the disk (the lock is held only to append).
    public func submit(_ request: DumpRequest) {
        guard filesTaken.wrappingAdd(1, ordering: .relaxed).oldValue < maxFiles else {
            filesTaken.wrappingSubtract(1, ordering: .relaxed)
            bump(request.mirror, .skippedLimit)
            return
        }
        if !writer.offer(request, bytes: request.memoryBytes, queueBytesMax: queueBytesMax) {
            filesTaken.wrappingSubtract(1, ordering: .relaxed)
            bump(request.mirror, .droppedQueue)
            problems?.dropped(.dumpDropped)
        }
    }

    private func bump(_ mirror: Int, _ result: Result) {
        counts.withLock { $0[mirror * Result.allCases.count + result.rawValue] += 1 }
    }

    /// The file's bytes for `request` (also what the tests read).
    public func fileBytes(_ request: DumpRequest) -> [UInt8] {
        let (main, mirror) = servers.withLock { ($0[0], $0[request.mirror + 1]) }
        return Self.fileBytes(request, mainAddress: main, mirrorAddress: mirror,
                              mirrorName: mirrorNames.withLock { $0[request.mirror] }, wallOffsetUs: wallOffsetUs)
    }

    /// Two conversations: the client with main, then the client with the mirror.
    public static func fileBytes(_ request: DumpRequest, mainAddress: ProxyAddress, mirrorAddress: ProxyAddress,
                                 mirrorName: String, wallOffsetUs: UInt64) -> [UInt8] {
        // Without the client's address (the kernel could not say): a documentation address.
        let client = request.clientAddresses?.source
            ?? [UInt8]([192, 0, 2, 1]).withUnsafeBytes { ProxyAddress(family: .ipv4, networkBytes: $0, port: 1) }
        let start = request.startUs &+ wallOffsetUs
        let end = request.endUs &+ wallOffsetUs
        let clientSegments = request.client.segments(offsetUs: wallOffsetUs)
        let conversations = [
            Pcapng.Conversation(client: client, server: mainAddress, clientSegments: clientSegments,
                                serverSegments: request.main.segments(offsetUs: wallOffsetUs), startUs: start, endUs: end),
            Pcapng.Conversation(client: client, server: mirrorAddress, clientSegments: clientSegments,
                                serverSegments: request.mirrorReplies.segments(offsetUs: wallOffsetUs), startUs: start, endUs: end),
        ]
        var comment = "swift-duplicator --compare: mirror \(mirrorName) \(request.verdict.label)"
        if request.verdict == .diverged { comment += " at reply byte \(request.divergenceOffset)" }
        comment += "; conversation 1: client with main, 2: client with the mirror"
        comment += "; bytes not recorded (past --dump-bytes): client \(request.client.droppedBytes), "
            + "main \(request.main.droppedBytes), mirror \(request.mirrorReplies.droppedBytes)"
        comment += "; the proxy's own addresses toward the servers are not shown: each conversation is the client's address and port with the server's"
        return Pcapng.file(conversations, comment: comment)
    }

    private func write(_ request: DumpRequest) {
        let bytes = fileBytes(request)
        let number = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        let mirrorPart = mirrorNames.withLock { $0[request.mirror] }.map { $0.isLetter || $0.isNumber || $0 == "." ? $0 : "_" }
        let path = "\(directory)/dump-\(getpid())-\(number)-\(String(mirrorPart))-\(request.verdict.label).pcapng"
        let failure = BackgroundWriter<DumpRequest>.writeNewFile(path: path, bytes: bytes)
        if failure == 0 {
            bump(request.mirror, .written)
            let dropped = request.client.droppedBytes + request.main.droppedBytes + request.mirrorReplies.droppedBytes
            truncatedBytes.withLock { $0[request.mirror] += dropped }
        } else {
            bump(request.mirror, .failed)
            problems?.writeFailed(.dumpWriteFailure, path: path, errno: failure)
        }
    }
}
