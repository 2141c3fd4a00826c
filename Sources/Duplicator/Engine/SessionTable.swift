import Glibc
import Platform
import Ring

/// The fixed-size table of one worker's sessions and the free list of its
/// indices. All queue storage is one anonymous mapping, laid out by position:
/// row `p` holds position `p` of every session's queue of one leg, side by
/// side. Queues restart at position 0 when empty, so shallow queues share a
/// few resident rows, and pages of deep rows become resident only when some
/// backlog grows into them: idle sessions cost little memory, however deep a
/// backlog may get.
public final class SessionTable {
    public let sessions: [Session]
    /// The same sessions, unretained: `sessions` keeps them alive as long as
    /// the table. A lookup through the array retains and releases the
    /// session, once per completion; through these it costs neither.
    private let unretained: UnsafeMutablePointer<Unmanaged<Session>>
    private var freeIndices: [UInt32]
    private let storage: UnsafeMutableRawPointer
    private let storageBytes: Int
    /// `--compare`: one window per session and mirror, or nil.
    private let compareStorage: UnsafeMutableRawPointer?
    private let compareStorageBytes: Int

    public init(capacity: Int, context: SessionContext) throws {
        precondition(capacity > 0 && capacity < Int(UInt32.max))
        let perSession = Session.chunkCapacity(context.limits)
        storageBytes = max(1, capacity * perSession * MemoryLayout<SendQueue.Chunk>.stride)
        guard let memory = mmap(nil, storageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else {
            throw SystemCallError(operation: "mmap of \(storageBytes) bytes for \(capacity) sessions", errorNumber: errno)
        }
        storage = memory
        // A comparison keeps only what one stream is ahead and restarts at
        // the window's start when level: pages of a window become resident
        // only as far as a mirror lagged (MAP_NORESERVE: address space only).
        let windowBytes = context.limits.compareWindowBytes
        let perSessionCompare = windowBytes * context.limits.mirrorCount
        compareStorageBytes = capacity * perSessionCompare
        if compareStorageBytes > 0 {
            guard let windows = mmap(nil, compareStorageBytes, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), windows != MAP_FAILED else {
                let code = errno
                munmap(memory, storageBytes)
                throw SystemCallError(operation: "mmap of \(compareStorageBytes) bytes of --compare windows for \(capacity) sessions",
                                      errorNumber: code)
            }
            compareStorage = windows
        } else {
            compareStorage = nil
        }
        let chunks = memory.bindMemory(to: SendQueue.Chunk.self, capacity: capacity * perSession)
        let compareStorage = compareStorage
        sessions = (0..<capacity).map { index in
            Session(index: UInt32(index), context: context, chunkStorage: chunks + index, stride: capacity,
                    compareWindows: compareStorage.map { $0 + index * perSessionCompare })
        }
        unretained = .allocate(capacity: capacity)
        unretained.initialize(from: sessions.map { Unmanaged.passUnretained($0) }, count: capacity)
        freeIndices = (0..<UInt32(capacity)).reversed()
    }

    deinit {
        unretained.deallocate()
        munmap(storage, storageBytes)
        if let compareStorage { munmap(compareStorage, compareStorageBytes) }
    }

    public var capacity: Int { sessions.count }
    public var freeCount: Int { freeIndices.count }
    public var activeCount: Int { sessions.count - freeIndices.count }

    /// A free session, or nil when the table is full.
    @inline(__always)
    public func take() -> Session? {
        guard let index = freeIndices.popLast() else { return nil }
        return sessions[Int(index)]
    }

    /// Gives back a session that is no longer active.
    @inline(__always)
    public func free(_ session: Session) {
        precondition(!session.isActive)
        freeIndices.append(session.index)
    }

    /// Runs `body` with the session at `index`, active or not, without
    /// retaining it (see `unretained`): for the worker's per-batch steps.
    @inline(__always)
    public func withSession<Result>(at index: UInt32, _ body: (Session) -> Result) -> Result {
        unretained[Int(index)]._withUnsafeGuaranteedRef(body)
    }

    /// The session a completion belongs to, or nil when it is stale (its
    /// session ended and its place may have a new occupant).
    public func session(for tag: CompletionTag) -> Session? {
        withSession(for: tag) { $0 }
    }

    /// Runs `body` with the session a completion belongs to, without
    /// retaining it; nil, and `body` not run, when the completion is stale.
    @inline(__always)
    public func withSession<Result>(for tag: CompletionTag, _ body: (Session) -> Result) -> Result? {
        guard Int(tag.session) < sessions.count else { return nil }
        return unretained[Int(tag.session)]._withUnsafeGuaranteedRef { session in
            session.isActive && session.generation == tag.generation ? body(session) : nil
        }
    }

    /// What became of a delivered completion.
    public enum Delivery {
        /// Its session ended and its place may have a new occupant: the
        /// caller gives back any buffer the kernel picked for it.
        case stale
        case handled
        /// The session ended with it; its place is free again.
        case ended(Session)
    }

    /// The one path from a completion to its session, for the worker, the
    /// tests' simulated IO and the benchmarks alike: the session with the
    /// tag's index and generation handles it, and if that ended the session,
    /// its place goes back to the free list.
    @inline(__always)
    public func deliver<IO: SessionIO>(_ kind: OperationKind, tag: CompletionTag, result: Int32, selectedBuffer: UInt32?,
                                       io: IO) -> Delivery {
        guard Int(tag.session) < sessions.count else { return .stale }
        return unretained[Int(tag.session)]._withUnsafeGuaranteedRef { session in
            guard session.isActive && session.generation == tag.generation else { return .stale }
            session.handle(kind: kind, leg: Leg(tag), result: result, selectedBuffer: selectedBuffer, io: io)
            guard !session.isActive else { return .handled }
            free(session)
            return .ended(session)
        }
    }
}
