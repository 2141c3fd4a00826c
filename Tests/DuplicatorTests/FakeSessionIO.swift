import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// A scripted, deterministic stand-in for the kernel under `Session`: it
// records every operation a session asks for, lends pool slots the way a
// provided buffer ring would, and lets a test (or `Simulation`) decide when
// and how each operation completes. It checks the session's promises about
// descriptors and slots as it goes and records a test issue for each breach.

// MARK: - The fake

final class FakeSessionIO: WorkerBackend {
    let pool: BufferPool
    let stats: WorkerStats
    let context: SessionContext
    let table: SessionTable
    /// The worker's own logic, over this fake: clients are accepted and
    /// every completion is delivered through it, as in the real worker.
    let core: WorkerCore<FakeSessionIO>
    var limits: SessionLimits { context.limits }

    /// Slots lent out to "the kernel": a recv completion takes one (LIFO, so a
    /// slot recycled too early is overwritten at once and caught).
    private(set) var freeSlots: [UInt32]
    /// Every request in order, including cancels and closes.
    private(set) var requests: [FakeOp] = []
    /// Requests whose completion has not been delivered (recv, discard, send, connect, shutdown).
    private(set) var pending: [FakeOp] = []
    /// Cancel requests whose own completion has not been delivered.
    private(set) var pendingCancels: [FakeOp] = []
    private(set) var fds: [Int32: FDRecord] = [:]
    private(set) var fdOrder: [Int32] = []
    /// The sessions waiting for buffers, in the order the worker keeps.
    var waiters: [UInt32] { core.waiters.elements }
    /// The accept as the worker asks for it.
    private(set) var acceptArms = 0
    private(set) var acceptCancels = 0
    private(set) var listenerClosed = false
    /// Clients the worker refused at once (table full, stopping, a loop).
    private(set) var refused: [Int32] = []
    private(set) var waitForBuffersCalls = 0
    private(set) var recycleCount = 0
    private(set) var violations: [String] = []
    private(set) var ended: [SessionKey: EndedSession] = [:]
    private(set) var startedKeys: [SessionKey] = []
    private(set) var staleCompletions = 0
    private(set) var lastKey: SessionKey?
    /// Sessions that asked to be woken by a timer, with the deadline.
    private(set) var flushRequests: [(index: UInt32, deadlineUs: UInt64, timer: SessionTimer)] = []
    /// Descriptors whose replies the session asked to discard in batches.
    private(set) var discardingInBatches: Set<Int32> = []
    private(set) var gatheredSends = 0
    /// `openSocket(for:)` fails with this errno for a leg while set.
    var openFailures: [Leg: Int32] = [:]
    /// What the simulated peers of each session will do (see `Simulation`).
    var scripts: [SessionKey: PeerScript] = [:]
    /// Bytes "the kernel" holds for a descriptor that its peer has not
    /// acknowledged (`unsentBytes`); 0 unless set.
    var unacknowledgedBytes: [Int32: Int] = [:]
    /// What `addresses(fd:)` answers for every client (the kernel's getpeername and getsockname).
    var clientAddresses: ProxyAddresses?
    private(set) var addressQueries = 0

    private var starting: (session: Session, key: SessionKey)?
    private var admitted: (session: Session, key: SessionKey)?
    private var nextFD: Int32 = 100
    private var nextOpID = 1

    init(limits: SessionLimits, slotCount: Int = 16, slotSize: Int = 4096, sessions: Int = 4,
         drainTimeoutMs: Int = 5_000, samplingSeed: UInt64 = 1) throws {
        pool = try BufferPool(slotSize: slotSize, slotCount: slotCount)
        stats = WorkerStats(mirrorCount: limits.mirrorCount)
        context = SessionContext(limits: limits, pool: pool, stats: stats, samplingSeed: samplingSeed)
        table = try SessionTable(capacity: sessions, context: context)
        freeSlots = (0..<UInt32(slotCount)).reversed()
        core = WorkerCore(context: context, table: table, waiters: BufferWaiters(capacity: sessions),
                          timers: SessionTimers(capacity: sessions),
                          idleTimeoutMs: limits.idleTimeoutMs, drainTimeoutMs: drainTimeoutMs, stats: stats,
                          allStats: [stats], mirrorNames: (0..<limits.mirrorCount).map { "mirror\($0)" })
        core.start(io: self)
    }

    // MARK: Violations

    func violation(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        violations.append(text)
        Issue.record(Comment(rawValue: "fake IO: " + text), sourceLocation: sourceLocation)
    }

    // MARK: Sessions

    /// A client arrives: the worker's accept path takes a session from the
    /// table and starts it on a new client descriptor (nil when refused).
    @discardableResult
    func start(clientFD: Int32? = nil) -> Session? {
        let fd = clientFD ?? allocateFD()
        admitted = nil
        core.deliver(WorkerCompletion(tag: WorkerCore<FakeSessionIO>.acceptTag, result: fd, hasMore: true), io: self)
        starting = nil
        guard let (session, key) = admitted else { return nil }
        admitted = nil
        if session.generation != key.generation { violation("start did not bump the generation to \(key)") }
        if !session.isActive { sessionEnded(session, freed: true) }
        return session
    }

    /// How the last started session ended (nil while it is active).
    var lastEnded: EndedSession? { lastKey.flatMap { ended[$0] } }

    func session(_ key: SessionKey? = nil) -> Session? {
        guard let key = key ?? lastKey else { return nil }
        let session = table.sessions[Int(key.index)]
        return SessionKey(session) == key && session.isActive ? session : nil
    }

    /// The worker's tick (stop, drain deadline, accept after a pause, the
    /// sessions' deadlines), with the fake's account of the sessions it ends.
    func workerTick(_ mode: StopMode = .running) {
        let active = table.sessions.filter(\.isActive)
        core.tick(stopMode: mode, io: self)
        for session in active where !session.isActive { sessionEnded(session, freed: true) }
    }

    func tickAll() {
        for session in table.sessions where session.isActive {
            session.tick(io: self)
            if !session.isActive { sessionEnded(session) }
        }
    }

    /// The worker's check of the PROXY protocol header deadline, over every live session.
    func checkProxyHeaderDeadlineAll() {
        for session in table.sessions where session.isActive {
            session.checkProxyHeaderDeadline(io: self)
            if !session.isActive { sessionEnded(session) }
        }
    }

    func abort(_ key: SessionKey? = nil) {
        guard let session = session(key) else {
            violation("abort of a session that is not active")
            return
        }
        session.abort(io: self)
        if !session.isActive { sessionEnded(session) }
    }

    /// Gives slots back to sessions that waited for them: the worker's own step.
    func resumeWaiters() {
        core.afterCompletions(io: self)
    }

    private func sessionEnded(_ session: Session, freed: Bool = false) {
        let key = SessionKey(session)
        let mirrors = (0..<limits.mirrorCount).map { session.legs[.mirror($0)].missing }
        ended[key] = EndedSession(key: key, cause: session.endCause, mirrorMissing: mirrors)
        if let comparisons = session.compareTap {
            ended[key]!.mirrorVerdicts = (0..<limits.mirrorCount).map { comparisons[$0].verdict }
        }
        if !freed { table.free(session) }
        for op in pending where op.key == key {
            violation("\(key) ended with \(op) still in flight")
        }
        for fd in fdOrder where fds[fd]!.key == key && fds[fd]!.closeCount != 1 {
            violation("\(key) ended but fd \(fd) (\(fds[fd]!.leg)) was closed \(fds[fd]!.closeCount) times")
        }
        if table.activeCount == 0 { checkPoolIsBack() }
    }

    private func checkPoolIsBack() {
        if pool.inUse != 0 { violation("no session is active but \(pool.inUse) slots are held") }
        if freeSlots.count != pool.slotCount || Set(freeSlots).count != pool.slotCount {
            violation("no session is active but only \(Set(freeSlots).count) of \(pool.slotCount) slots were recycled")
        }
        if context.mirrorOnlySlots != 0 {
            violation("no session is active but mirrorOnlySlots is \(context.mirrorOnlySlots)")
        }
    }

    // MARK: Lookups

    func fd(_ peer: Leg, _ key: SessionKey? = nil) -> Int32? {
        guard let key = key ?? lastKey else { return nil }
        return fdOrder.first { fds[$0]!.key == key && fds[$0]!.leg == peer }
    }

    /// Every byte the peer accepted from the session, in order.
    func sent(to peer: Leg, _ key: SessionKey? = nil) -> [UInt8] {
        guard let fd = fd(peer, key) else { return [] }
        return fds[fd]!.sent
    }

    func record(_ peer: Leg, _ key: SessionKey? = nil) -> FDRecord? {
        fd(peer, key).flatMap { fds[$0] }
    }

    func pendingOp(_ kind: OperationKind, _ peer: Leg, _ key: SessionKey? = nil) -> FakeOp? {
        let key = key ?? lastKey
        return pending.first { $0.kind == kind && $0.peer == peer && $0.key == key }
    }

    func hasPending(_ kind: OperationKind, _ peer: Leg, _ key: SessionKey? = nil) -> Bool {
        pendingOp(kind, peer, key) != nil
    }

    func requests(_ kind: OperationKind, _ peer: Leg? = nil, _ key: SessionKey? = nil) -> [FakeOp] {
        let key = key ?? lastKey
        return requests.filter { $0.kind == kind && (peer == nil || $0.peer == peer) && $0.key == key }
    }

    private func require(_ kind: OperationKind, _ peer: Leg, _ key: SessionKey?,
                         _ sourceLocation: SourceLocation) -> FakeOp? {
        if let op = pendingOp(kind, peer, key) { return op }
        Issue.record(Comment(rawValue: "no \(kind) in flight for \(peer); pending: \(pending)"),
                     sourceLocation: sourceLocation)
        return nil
    }

    // MARK: Completing operations (tests)

    /// `bytes` arrive for the recv in flight on `peer`: a free slot is
    /// chosen, filled and handed to the session. Returns the result delivered
    /// (-ENOBUFS when no slot is free; the bytes then stay unread).
    @discardableResult
    func completeRecv(_ peer: Leg, _ bytes: [UInt8], _ key: SessionKey? = nil,
                      sourceLocation: SourceLocation = #_sourceLocation) -> Int32? {
        guard let op = require(.recv, peer, key, sourceLocation) else { return nil }
        return deliverRecv(op, bytes)
    }

    /// The peer sent EOF; `withBuffer`: the completion also names a slot (with 0 bytes).
    func completeEOF(_ peer: Leg, _ key: SessionKey? = nil, withBuffer: Bool = false,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        guard let op = require(.recv, peer, key, sourceLocation) else { return }
        deliverEOF(op, withBuffer: withBuffer)
    }

    /// The operation of `kind` in flight on `peer` completes with `-errno`.
    func fail(_ kind: OperationKind, _ peer: Leg, errno code: Int32, _ key: SessionKey? = nil,
              sourceLocation: SourceLocation = #_sourceLocation) {
        guard let op = require(kind, peer, key, sourceLocation) else { return }
        deliver(op, result: -code)
    }

    /// The send in flight on `peer` completes with `count` bytes (all when nil).
    @discardableResult
    func completeSend(_ peer: Leg, count: Int? = nil, _ key: SessionKey? = nil,
                      sourceLocation: SourceLocation = #_sourceLocation) -> Int {
        guard let op = require(.send, peer, key, sourceLocation) else { return 0 }
        let count = count ?? op.length
        deliver(op, result: Int32(count))
        return count
    }

    /// Completes sends on `peer` (all of them) until none is in flight.
    func flushSends(_ peer: Leg, _ key: SessionKey? = nil) {
        while let op = pendingOp(.send, peer, key) { deliver(op, result: Int32(op.length)) }
    }

    /// Completes sends on every leg until none is in flight.
    func flushAllSends(_ key: SessionKey? = nil) {
        let key = key ?? lastKey
        while let op = pending.first(where: { $0.kind == .send && $0.key == key }) {
            deliver(op, result: Int32(op.length))
        }
    }

    /// The connect of `peer` completes with `result` (0 or -errno); the
    /// linked timeout's completion follows, as the kernel sends it.
    func completeConnect(_ peer: Leg, result: Int32 = 0, _ key: SessionKey? = nil,
                         sourceLocation: SourceLocation = #_sourceLocation) {
        guard let op = require(.connect, peer, key, sourceLocation) else { return }
        deliver(op, result: result)
        if op.timeoutMs > 0 {
            // The timeout is cancelled when the connect wins (-ECANCELED), or it fired (-ETIME).
            dispatch(tag: op.timeoutTag, result: result == -ECANCELED ? -ETIME : -ECANCELED, selectedBuffer: nil)
        }
    }

    /// Connects main and every mirror that asked.
    func connectAll(_ key: SessionKey? = nil) {
        let key = key ?? lastKey
        while let op = pending.first(where: { $0.kind == .connect && $0.key == key }) {
            completeConnect(op.peer, key)
        }
    }

    func completeShutdown(_ peer: Leg, result: Int32 = 0, _ key: SessionKey? = nil,
                          sourceLocation: SourceLocation = #_sourceLocation) {
        guard let op = require(.shutdown, peer, key, sourceLocation) else { return }
        deliver(op, result: result)
    }

    /// A mirror's reply (`result` > 0: bytes thrown away; 0: its EOF; < 0: an error).
    func completeDiscard(_ peer: Leg, result: Int32, _ key: SessionKey? = nil,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        guard let op = require(.discard, peer, key, sourceLocation) else { return }
        deliver(op, result: result)
    }

    /// Every operation on a descriptor with a cancel requested completes with
    /// -ECANCELED, then the cancels complete themselves.
    func completeCancelled() {
        while let op = pending.first(where: { fds[$0.fd]!.cancelRequested }) {
            deliver(op, result: -ECANCELED)
        }
        while !pendingCancels.isEmpty {
            let cancel = pendingCancels.removeFirst()
            dispatch(tag: cancel.tag, result: 1, selectedBuffer: nil)
        }
    }

    // MARK: Delivering completions

    func deliverRecv(_ op: FakeOp, _ bytes: [UInt8]) -> Int32 {
        precondition(!bytes.isEmpty && bytes.count <= pool.slotSize, "a recv takes 1...slotSize bytes")
        guard let slot = freeSlots.popLast() else {
            deliver(op, result: -ENOBUFS)
            return -ENOBUFS
        }
        guard pool.referenceCount(slot) == 0 else {
            violation("slot \(slot) was recycled while still referenced \(pool.referenceCount(slot)) times")
            return -ENOBUFS
        }
        bytes.withUnsafeBytes { pool.pointer(slot).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        deliver(op, result: Int32(bytes.count), selectedBuffer: slot)
        return Int32(bytes.count)
    }

    func deliverEOF(_ op: FakeOp, withBuffer: Bool) {
        if withBuffer, let slot = freeSlots.popLast() {
            deliver(op, result: 0, selectedBuffer: slot)
        } else {
            deliver(op, result: 0)
        }
    }

    /// Removes `op` from the in-flight set, checks it, and hands its
    /// completion to the session it belongs to (if that session still lives).
    func deliver(_ op: FakeOp, result: Int32, selectedBuffer: UInt32? = nil) {
        guard let position = pending.firstIndex(where: { $0.id == op.id }) else {
            violation("completion of \(op), which is not in flight")
            return
        }
        pending.remove(at: position)
        switch op.kind {
        case .send where result > 0 && op.fromSessionMemory:
            if Int(result) > op.length { violation("test bug: \(op) completed with \(result) bytes") }
            if [UInt8](UnsafeRawBufferPointer(start: op.memory, count: op.length)) != op.bytes {
                violation("\(op): the session's memory changed while the send was in flight")
            }
            fds[op.fd]!.sent += op.bytes[..<Int(result)]
            fds[op.fd]!.sendCompletions += 1
        case .send where result > 0:
            if Int(result) > op.length { violation("test bug: \(op) completed with \(result) bytes") }
            var now: [UInt8] = []
            for segment in op.segments {
                if pool.referenceCount(segment.slot) == 0 {
                    violation("\(op) completed but slot \(segment.slot) had been let go while the send was in flight")
                }
                now += UnsafeRawBufferPointer(start: pool.pointer(segment.slot) + segment.offset, count: segment.length)
            }
            if now != op.bytes { violation("\(op): a slot was overwritten while the send was in flight") }
            fds[op.fd]!.sent += op.bytes[..<Int(result)]
            fds[op.fd]!.sendCompletions += 1
        case .shutdown where result == 0:
            fds[op.fd]!.shutdownCompleted = true
        case .connect where result == 0:
            fds[op.fd]!.connected = true
        case .discard:
            fds[op.fd]!.discardCompletions += 1
        default:
            break
        }
        dispatch(tag: op.tag, result: result, selectedBuffer: selectedBuffer)
    }

    /// A completion, delivered as the worker delivers it.
    func dispatch(tag: CompletionTag, result: Int32, selectedBuffer: UInt32?) {
        let session = table.session(for: tag)
        if session == nil { staleCompletions += 1 }
        // With --accept-proxy, main and the mirrors open once the client's header arrives.
        let outer = starting
        if let session { starting = (session, SessionKey(session)) }
        core.deliver(WorkerCompletion(tag: tag, result: result, selectedBuffer: selectedBuffer), io: self)
        starting = outer
        if let session, !session.isActive { sessionEnded(session, freed: true) }
    }

    // MARK: - WorkerBackend

    func armAccept() -> Bool {
        acceptArms += 1
        return !listenerClosed
    }

    func cancelAccept() { acceptCancels += 1 }

    func closeListener() { listenerClosed = true }

    var buffersLent: Bool { !freeSlots.isEmpty }

    /// A recv completion took the slot from `freeSlots` already.
    func bufferTaken(_ slot: UInt32) {}

    func admit(fd: Int32, session: Session) {
        // `start` bumps the generation first; the key is the bumped one.
        let key = SessionKey(index: session.index, generation: session.generation &+ 1)
        fds[fd] = FDRecord(fd: fd, leg: .client, key: key)
        fdOrder.append(fd)
        starting = (session, key)
        admitted = (session, key)
        lastKey = key
        startedKeys.append(key)
    }

    func refuse(fd: Int32) { refused.append(fd) }

    func isLoop(acceptedFD fd: Int32) -> Bool { false }

    func connectLooped(fd: Int32, leg: Leg, result: Int32) -> Bool { false }

    var loopCheckNeeded: Bool { false }

    func tick(nowMs: UInt64) {}

    // MARK: - SessionIO

    private func allocateFD() -> Int32 {
        defer { nextFD += 1 }
        return nextFD
    }

    func openSocket(for leg: Leg) -> Int32 {
        guard let starting else {
            violation("openSocket(for: \(leg)) outside a session's start or completion")
            return -EINVAL
        }
        if leg == .client || leg.index >= Leg.mirror(limits.mirrorCount).index { violation("openSocket for unknown leg \(leg)") }
        if let code = openFailures[leg] { return -code }
        let fd = allocateFD()
        fds[fd] = FDRecord(fd: fd, leg: leg, key: starting.key)
        fdOrder.append(fd)
        return fd
    }

    /// Checks a request on `fd` and records it; nil when it is refused as a breach.
    private func request(_ kind: OperationKind, fd: Int32, tag: CompletionTag,
                         _ fill: (inout FakeOp) -> Void = { _ in }) -> FakeOp? {
        var op = FakeOp(id: nextOpID, kind: kind, fd: fd, tag: tag)
        nextOpID += 1
        fill(&op)
        requests.append(op)
        guard var record = fds[fd] else {
            violation("\(op) on a descriptor the session was never given")
            return nil
        }
        if tag.kind != kind.rawValue { violation("\(op) carries a tag of kind \(tag.kind)") }
        if SessionKey(tag) != record.key || Leg(tag) != record.leg {
            violation("\(op): tag \(tag) does not belong to fd \(fd) (\(record.key) leg \(record.leg))")
        }
        if record.closeCount > 0 { violation("\(op) after fd \(fd) was closed") }
        let inFlight = pending.filter { $0.fd == fd }
        switch kind {
        case .cancel:
            record.cancelRequested = true
        case .close:
            if record.closeCount > 0 { violation("second close of fd \(fd)") }
            if !inFlight.isEmpty { violation("close of fd \(fd) with operations in flight: \(inFlight)") }
            record.closeCount += 1
        default:
            if record.cancelRequested { violation("\(op) after a cancel of fd \(fd) was asked for") }
            if kind != .connect && record.leg != .client && !record.connected {
                violation("\(op) before fd \(fd) connected")
            }
        }
        switch kind {
        case .connect:
            if record.leg == .client { violation("connect of a client descriptor") }
            if record.connectRequested { violation("second connect of fd \(fd)") }
            if op.connectLeg != record.leg { violation("\(op) connects to \(String(describing: op.connectLeg))'s address, the socket was opened for \(record.leg)") }
            record.connectRequested = true
        case .recv, .discard:
            // Mirrors are discarded; so is main once the client failed (it flushes like a mirror).
            // With `--compare` a mirror's replies are received instead (discarded once given up).
            let isMirror = record.leg.isMirror
            let mainFlushing = record.leg == .main && table.sessions[Int(op.tag.session)].endCause == .clientError
            let comparing = limits.compareWindowBytes > 0
            if kind == .discard ? !(isMirror || mainFlushing) : (isMirror && !comparing) {
                violation("\(op) on leg \(record.leg)")
            }
            if inFlight.contains(where: { $0.kind == .recv || $0.kind == .discard }) {
                violation("\(op): a second receive in flight on fd \(fd)")
            }
        case .send:
            if inFlight.contains(where: { $0.kind == .send }) { violation("\(op): a second send in flight on fd \(fd)") }
            if record.shutdownRequested > 0 { violation("\(op) after the write side of fd \(fd) was shut") }
            if op.fromSessionMemory {
                if op.length <= 0 || op.memory == nil { violation("\(op) of nothing") }
                break
            }
            if op.length <= 0 || op.segments.isEmpty || op.segments.contains(where: {
                $0.length <= 0 || $0.offset < 0 || $0.offset + $0.length > pool.slotSize || Int($0.slot) >= pool.slotCount
            }) {
                violation("\(op) is out of its slot's bounds")
                return nil
            }
            if op.segments.contains(where: { pool.referenceCount($0.slot) == 0 }) { violation("\(op) from a slot no one holds") }
        case .shutdown:
            if record.shutdownRequested > 0 { violation("second shutdown of fd \(fd)") }
            if inFlight.contains(where: { $0.kind == .send }) {
                violation("shutdown of fd \(fd) while a send is in flight: its bytes could be cut off")
            }
            record.shutdownRequested += 1
        default:
            break
        }
        fds[fd] = record
        return op
    }

    func connect(fd: Int32, leg: Leg, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        guard let op = request(.connect, fd: fd, tag: tag, {
            $0.connectLeg = leg
            $0.timeoutMs = timeoutMs
            $0.timeoutTag = timeoutTag
        }) else { return }
        if timeoutTag.kind != OperationKind.connectTimeout.rawValue || SessionKey(timeoutTag) != SessionKey(tag)
            || timeoutTag.leg != tag.leg {
            violation("\(op): its timeout tag \(timeoutTag) does not match")
        }
        pending.append(op)
    }

    func recv(fd: Int32, tag: CompletionTag) {
        if let op = request(.recv, fd: fd, tag: tag) { pending.append(op) }
    }

    func discard(fd: Int32, tag: CompletionTag) {
        if let op = request(.discard, fd: fd, tag: tag) { pending.append(op) }
    }

    func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag) {
        let pool = pool
        guard let op = request(.send, fd: fd, tag: tag, {
            $0.slot = slot
            $0.offset = offset
            $0.length = length
            $0.segments = [(slot, offset, length)]
            if length > 0, offset >= 0, offset + length <= pool.slotSize, Int(slot) < pool.slotCount {
                $0.bytes = [UInt8](UnsafeRawBufferPointer(start: pool.pointer(slot) + offset, count: length))
            }
        }) else { return }
        pending.append(op)
    }

    func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag) {
        let pool = pool
        gatheredSends += 1
        guard chunks >= 1, chunks <= queue.count, chunks <= Session.gatherChunksMax else {
            violation("gathered send of \(chunks) chunks from a queue of \(queue.count)")
            return
        }
        guard let op = request(.send, fd: fd, tag: tag, {
            var total = 0
            for position in 0..<chunks {
                let chunk = queue.chunk(at: position)
                $0.segments.append((chunk.slot, Int(chunk.offset), Int(chunk.length)))
                total += Int(chunk.length)
                if Int(chunk.offset) + Int(chunk.length) <= pool.slotSize, Int(chunk.slot) < pool.slotCount {
                    $0.bytes += UnsafeRawBufferPointer(start: pool.pointer(chunk.slot) + Int(chunk.offset), count: Int(chunk.length))
                }
            }
            $0.slot = $0.segments[0].slot
            $0.offset = $0.segments[0].offset
            $0.length = length
            if total != length { self.violation("gathered send of \(length) bytes over chunks of \(total)") }
        }) else { return }
        pending.append(op)
    }

    func wake(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        if flushRequests.contains(where: { $0.index == index && $0.timer == timer }) {
            violation("session \(index) asked for a second \(timer) wake-up before the first came")
        }
        flushRequests.append((index, deadlineUs, timer))
        core.timers.add(session: index, atUs: deadlineUs, for: timer)
    }

    func discardInBatches(fd: Int32) {
        if fds[fd]?.closeCount != 0 { violation("discardInBatches(fd: \(fd)) of a descriptor that is not open") }
        discardingInBatches.insert(fd)
    }

    /// Wakes every session whose deadline the clock has reached: the worker's own step.
    func fireDueFlushes() {
        flushRequests.removeAll { $0.deadlineUs <= context.nowUs }
        let active = table.sessions.filter(\.isActive)
        core.fireDueTimers(io: self)
        for session in active where !session.isActive { sessionEnded(session, freed: true) }
    }

    /// Moves the clock to the earliest mirror flush deadline and fires what is due.
    func advanceToNextFlush() {
        guard let earliest = flushRequests.map(\.deadlineUs).min() else { return }
        context.nowUs = max(context.nowUs, earliest)
        fireDueFlushes()
    }

    func shutdownWrite(fd: Int32, tag: CompletionTag) {
        if let op = request(.shutdown, fd: fd, tag: tag) { pending.append(op) }
    }

    func cancel(fd: Int32, tag: CompletionTag) {
        if let op = request(.cancel, fd: fd, tag: tag) { pendingCancels.append(op) }
    }

    func close(fd: Int32, tag: CompletionTag) {
        _ = request(.close, fd: fd, tag: tag)
    }

    func send(fd: Int32, from bytes: UnsafeRawPointer, length: Int, tag: CompletionTag) {
        guard let op = request(.send, fd: fd, tag: tag, {
            $0.fromSessionMemory = true
            $0.memory = bytes
            $0.length = length
            $0.bytes = [UInt8](UnsafeRawBufferPointer(start: bytes, count: length))
        }) else { return }
        pending.append(op)
    }

    func addresses(fd: Int32) -> ProxyAddresses? {
        addressQueries += 1
        if fds[fd]?.leg != .client { violation("addresses(fd: \(fd)) of a descriptor that is not a client") }
        return clientAddresses
    }

    func unsentBytes(fd: Int32) -> Int {
        guard let record = fds[fd], record.closeCount == 0 else {
            violation("unsentBytes(fd: \(fd)) of a descriptor that is not open")
            return 0
        }
        return unacknowledgedBytes[fd] ?? 0
    }

    func recycle(slot: UInt32) {
        recycleCount += 1
        guard Int(slot) < pool.slotCount else {
            violation("recycle of slot \(slot), beyond the pool")
            return
        }
        if pool.referenceCount(slot) != 0 {
            violation("recycle of slot \(slot) still held \(pool.referenceCount(slot)) times")
        }
        if freeSlots.contains(slot) {
            violation("slot \(slot) recycled twice")
            return
        }
        freeSlots.append(slot)
    }

    func waitForBuffers(session index: UInt32) {
        waitForBuffersCalls += 1
        core.waiters.add(index)
    }

    // MARK: - End of a test

    /// Nothing in flight, every session over, every descriptor closed exactly
    /// once, every slot back: what must hold when a script has played out.
    func expectQuiescent(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(violations.isEmpty, "violations: \(violations)", sourceLocation: sourceLocation)
        #expect(pending.isEmpty, "still in flight: \(pending)", sourceLocation: sourceLocation)
        #expect(table.activeCount == 0, "sessions still active", sourceLocation: sourceLocation)
        #expect(stats.sessionsActive.value == 0, sourceLocation: sourceLocation)
        #expect(pool.inUse == 0, "slots still held: \(pool.inUse)", sourceLocation: sourceLocation)
        #expect(Set(freeSlots).count == pool.slotCount, "slots not recycled", sourceLocation: sourceLocation)
        #expect(context.mirrorOnlySlots == 0, sourceLocation: sourceLocation)
        #expect(context.sessionsEnding == 0, "sessions counted as ending: \(context.sessionsEnding)", sourceLocation: sourceLocation)
        let badCloses = fdOrder.filter { fds[$0]!.closeCount != 1 }
        #expect(badCloses.isEmpty, "fds not closed exactly once: \(badCloses.map { ($0, fds[$0]!.closeCount) })",
                sourceLocation: sourceLocation)
    }
}

extension FakeSessionIO {
    func markEarlyEOF(_ fd: Int32) { fds[fd]!.earlyEOFDelivered = true }

    /// Takes `slot` out of the free list, as the kernel does when it picks it for a recv.
    func takeFreeSlotForTest(_ slot: UInt32) { freeSlots.removeAll { $0 == slot } }

    /// Delivers the completions of the cancels themselves (the session ignores them).
    func completeCancelledCancels() {
        while !pendingCancels.isEmpty {
            let cancel = pendingCancels.removeFirst()
            dispatch(tag: cancel.tag, result: 0, selectedBuffer: nil)
        }
    }
}
