import Glibc
import Logging
import Platform
import Ring

/// TLS on a session's legs, between the sessions and the backend (io_uring
/// or epoll alike), so that `Session`'s forwarding stays what it is and
/// sees only plaintext: the client's leg with `--tls-cert` (termination),
/// main's with `--forward-tls`, the mirrors' with `--mirror-tls`.
///
/// - A new client's handshake runs here first, on the ring's receives and
///   sends, with the session's place taken but the session not started:
///   main and the mirrors are connected only once it succeeds. A failure
///   or `--tls-handshake-timeout` ends it alone, counted
///   (`cause="tls_handshake"`).
/// - Then the session's receives on the client come back decrypted, in
///   place, in the slot the ciphertext arrived in: the one slot main's
///   and the mirrors' sends share, as without TLS. Records decrypted beyond
///   that slot wait in the stream and fill a free slot at the session's next receive.
/// - The session's sends to the client are encrypted into this leg's
///   output buffer and complete, to the session, once all their ciphertext
///   is sent: back-pressure stays end to end.
///
/// - Main's and a mirror's handshake runs once their TCP connect succeeded;
///   the session is told of the connect when the handshake is done (or
///   that it failed, e.g. a certificate that does not verify).
///
/// Completions of what is answered here without the kernel (plaintext
/// already decrypted, a send already failed) are queued and delivered by
/// `deliverQueued`, never from inside a session's request.
public final class TLSSessionIO<Backend: WorkerBackend>: SessionIO {
    public typealias Contexts = TLSContexts

    unowned(unsafe) let backend: Backend
    private let table: SessionTable
    private let context: SessionContext
    private var contexts: Contexts
    /// Per session, a place for each of its legs (`legsPerSession`).
    private let legsPerSession: Int
    private var legs: [TLSLeg]
    /// Legs whose session let go of them (or whose handshake failed) while
    /// their own operations were in flight: closed when those complete.
    private var draining: [TLSLeg] = []
    private var handshakesInProgress = 0
    /// Handshake steps waiting for their turn after the established
    /// sessions' work of a round (`runHandshakes`).
    private var handshakes: HandshakeBudget
    /// Where the steps run: a niced thread of this worker's own while a
    /// session that has run for a while is open (`protectsSessions()`), or
    /// this thread within the round's budget.
    private let steps: HandshakeThread?
    /// A session established `protectedAgeMs` ago or more is still open: its
    /// traffic is what the handshake thread keeps from waiting behind
    /// handshakes (promise 11). With none, a step runs on this thread
    /// within the round's budget: handing it to the thread and taking it
    /// back costs a wakeup of each, about a fifth of a handshake's CPU here
    /// (BENCHMARKS.md, "Handshakes on the worker while nothing is to
    /// protect"), and protects nothing. Looked at once a tick at most.
    private var sessionsToProtect = false
    private var protectionCheckedMs: UInt64 = 0
    static var protectedAgeMs: UInt64 { 100 }
    /// Per place, when its leg's handshake ended (`context.nowMs`), while it
    /// is established; 0 otherwise. Apart from `legs`, so that the look goes
    /// through 8 bytes a place.
    private var establishedMs: [UInt64]
    private var stepsDone: [HandshakeThread.Result] = []
    /// `--mirror-tls`: each mirror slot's host, the name its certificate must have.
    private var mirrorHosts: [String] = []
    private var queued: [WorkerCompletion] = []
    private var queuedHead = 0
    private let logger: Logger
    private var failureLog = RateLimitedLog(intervalMs: 10_000)

    init(backend: Backend, table: SessionTable, context: SessionContext, contexts: Contexts, logger: Logger) {
        self.backend = backend
        self.table = table
        self.context = context
        self.contexts = contexts
        self.logger = logger
        let perSession = Leg.count(mirrors: context.limits.mirrorCount)
        legsPerSession = perSession
        legs = (0..<(table.capacity * perSession)).map {
            TLSLeg(session: UInt32($0 / perSession), leg: Leg(rawValue: UInt8($0 % perSession)))
        }
        establishedMs = Array(repeating: 0, count: legs.count)
        var steps: HandshakeThread?
        do {
            let thread = try HandshakeThread(name: "tls handshakes")
            if backend.watch(fd: thread.wakeFD) {
                steps = thread
            } else {
                thread.stop()
                logger.warning("TLS handshakes run on the worker's thread: the handshake thread's socket cannot be watched")
            }
        } catch {
            logger.warning("TLS handshakes run on the worker's thread: \(error)")
        }
        self.steps = steps
        handshakes = HandshakeBudget(capacity: table.capacity * perSession)
        armStepsWake()
    }

    /// The mirror slots' addresses as written (`host:port`), at start and after a reload.
    func adopt(mirrorNames: [String]) {
        mirrorHosts = mirrorNames.map { text in
            let host = (try? Endpoint(parsing: text, role: .connect))?.host ?? "127.0.0.1"
            return host.isEmpty ? "127.0.0.1" : host
        }
    }

    /// Clients' handshakes come before their sessions (`begin`).
    var terminatesClients: Bool { contexts.clients != nil }

    @inline(__always)
    func isEncrypted(_ leg: Leg) -> Bool { contexts.context(for: leg) != nil }

    @inline(__always)
    private func place(_ tag: CompletionTag) -> Int? {
        let leg = Int(tag.leg)
        guard leg < legsPerSession else { return nil }
        let index = Int(tag.session) &* legsPerSession &+ leg
        return index < legs.count ? index : nil
    }

    deinit {
        steps?.stop()
        for index in legs.indices { legs[index].release() }
        for index in draining.indices { draining[index].release() }
    }

    /// A reload: new connections get the new contexts (a renewed certificate);
    /// live ones keep theirs (their stream holds its context).
    func adopt(_ contexts: Contexts) {
        // TLS on or off for a kind of leg needs a new process (`ConfigDiff`).
        guard (contexts.clients == nil) == (self.contexts.clients == nil), (contexts.main == nil) == (self.contexts.main == nil),
              (contexts.mirrors == nil) == (self.contexts.mirrors == nil) else { return }
        self.contexts = contexts
    }

    public var pool: BufferPool { backend.pool }
    public var isIdle: Bool { queuedHead == queued.count }
    /// Handshake steps wait for the next round: the loop must not sleep.
    var hasHandshakeWork: Bool { handshakes.hasWork }

    // MARK: - The handshake

    /// A client was accepted into `session`'s place (taken from the table, not started).
    func begin(fd: Int32, session: Session) {
        guard let clients = contexts.clients else { return }
        let index = Int(session.index) &* legsPerSession
        legs[index].begin(fd: fd, stream: TLSStream(context: clients),
                          deadlineMs: context.nowMs + UInt64(max(1, contexts.handshakeTimeoutMs)))
        legs[index].proxyHeaderRead = !context.sessionLimits.acceptProxy
        handshakesInProgress += 1
        context.stats.tlsHandshakesActive.bump()
        armHandshakeReceive(index)
    }

    /// Main's or a mirror's TCP connect completed (`tag` is the session's):
    /// on success its handshake starts, and the session hears of the connect
    /// when it is done; a failure goes to the session as it is.
    func connected(tag: CompletionTag, result: Int32) {
        guard result >= 0, let index = place(tag), legs[index].phase == .connecting,
              let tls = contexts.context(for: Leg(tag)), table.session(for: tag) != nil else {
            if let index = place(tag), legs[index].phase == .connecting { legs[index].release() }
            deliverToSession(tag, result: result, slot: nil)
            return
        }
        let fd = legs[index].fd
        let leg = Leg(tag)
        let name = leg.isMirror && leg.mirrorIndex < mirrorHosts.count ? mirrorHosts[leg.mirrorIndex] : nil
        legs[index].phase = .idle
        legs[index].begin(fd: fd, stream: TLSStream(context: tls, serverName: name),
                          deadlineMs: context.nowMs + UInt64(max(1, contexts.handshakeTimeoutMs)))
        legs[index].connectTag = tag
        legs[index].proxyHeaderRead = true
        handshakesInProgress += 1
        // Its first step (the ClientHello, a key share) waits its turn too.
        handshakes.enqueue(index)
    }

    private func armHandshakeReceive(_ index: Int) {
        legs[index].receiving = true
        backend.recv(fd: legs[index].fd, tag: legs[index].tag(.tlsRecv))
    }

    /// A completion of this layer's own operations (`tlsRecv`, `tlsSend`,
    /// `tlsStepped`).
    func completed(_ kind: OperationKind, tag: CompletionTag, result: Int32, slot: UInt32?) {
        if kind == .tlsStepped {
            if let slot { backend.recycle(slot: slot) }
            return stepsWoke(result: result)
        }
        guard let index = place(tag), legs[index].generation == tag.generation, legs[index].phase != .idle,
              legs[index].phase != .connecting else {
            if let slot { backend.recycle(slot: slot) }
            drained(kind, tag: tag)
            return
        }
        switch kind {
        case .tlsRecv: handshakeReceived(index, result: result, slot: slot)
        case .tlsSend: ciphertextSent(index, result: result)
        default: break
        }
    }

    private func handshakeReceived(_ index: Int, result: Int32, slot: UInt32?) {
        legs[index].receiving = false
        guard legs[index].phase == .handshaking, let stream = legs[index].stream else {
            if let slot { backend.recycle(slot: slot) }
            closeIfIdle(index)
            return
        }
        guard result > 0, let slot else {
            if let slot { backend.recycle(slot: slot) }
            if result == -ENOBUFS {
                legs[index].waitsForBuffer = true
            } else {
                failHandshake(index, reason: result == 0 ? "the client closed" : "receive: \(RingError.describe(errno: -result))")
            }
            return
        }
        var bytes = UnsafeRawBufferPointer(start: pool.pointer(slot), count: Int(result))
        if !legs[index].proxyHeaderRead {
            legs[index].proxyHeader += bytes
            let header = legs[index].proxyHeader
            let parsed = header.withUnsafeBytes { ProxyProtocol.parse($0) }
            switch parsed {
            case .incomplete where header.count < ProxyProtocol.headerBytesMax:
                backend.recycle(slot: slot)
                armHandshakeReceive(index)
                return
            case .incomplete, .invalid:
                backend.recycle(slot: slot)
                failHandshake(index, reason: "no valid PROXY protocol header before the ClientHello", badProxyHeader: true)
                return
            case .complete(let length, _):
                legs[index].proxyHeaderRead = true
                legs[index].proxyHeader = Array(header[0..<length])
                let rest = header.count - length
                bytes = UnsafeRawBufferPointer(rebasing: bytes[(bytes.count - rest)...])
            }
        }
        stream.feed(bytes)
        backend.recycle(slot: slot)
        // The step waits for the end of the round (`runHandshakes`).
        handshakes.enqueue(index)
    }

    /// After a round's completions, the established sessions' work done:
    /// the handshake steps that wait. Handed to the thread, all of them; on
    /// this thread, as many as the round's budget allows (`HandshakeBudget`),
    /// the rest waiting for the next round.
    func runHandshakes() {
        guard handshakes.hasWork else { return }
        let thread = protectsSessions() ? steps : nil
        handshakes.startRound(bounded: thread == nil)
        while let index = handshakes.next(nowUs: MonotonicClock.nowMicros()) { step(index, on: thread) }
    }

    /// Whether a session established `protectedAgeMs` ago or more is open,
    /// as a look through `establishedMs` found it, at most a tick ago.
    private func protectsSessions() -> Bool {
        guard steps != nil else { return false }
        let nowMs = context.nowMs
        if nowMs &- protectionCheckedMs >= Self.protectedAgeMs {
            protectionCheckedMs = nowMs
            let establishedBy = nowMs &- Self.protectedAgeMs
            sessionsToProtect = establishedMs.contains { $0 != 0 && $0 <= establishedBy }
        }
        return sessionsToProtect
    }

    /// One step of a waiting handshake, with what its stream was fed, on
    /// `thread` or here. A place that failed, timed out or took a new client
    /// since (its own receive in flight) has nothing to step.
    private func step(_ index: Int, on thread: HandshakeThread?) {
        guard legs[index].phase == .handshaking, !legs[index].receiving, !legs[index].waitsForBuffer,
              !legs[index].stepping, let stream = legs[index].stream else { return }
        guard let thread else { return stepped(index, stream.handshake()) }
        legs[index].stepping = true
        thread.submit(HandshakeThread.Step(place: index, generation: legs[index].generation, stream: stream))
    }

    /// The thread's wake: one receive of its socket at a time.
    private func armStepsWake() {
        guard let steps else { return }
        backend.discard(fd: steps.wakeFD, tag: CompletionTag(kind: .tlsStepped, leg: .client, generation: 0, session: 0))
    }

    /// The handshake thread said steps are done (or the tick looks): each
    /// goes on here, unless its leg failed or took another client since.
    private func stepsWoke(result: Int32) {
        takeSteps()
        if result >= 0 || result == -EINTR || result == -EAGAIN {
            armStepsWake()
        } else if result != -ECANCELED {
            // Not woken any more: the tick takes the steps done.
            logger.warning("TLS handshake thread's wake: \(RingError.describe(errno: -result)); steps are taken once a tick")
        }
    }

    private func takeSteps() {
        guard let steps else { return }
        steps.takeResults(into: &stepsDone)
        for done in stepsDone {
            let index = done.place
            guard legs[index].generation == done.generation, legs[index].stepping else { continue }
            legs[index].stepping = false
            // A leg that failed meanwhile was let go already.
            if legs[index].phase == .handshaking { stepped(index, done.state) }
        }
        stepsDone.removeAll(keepingCapacity: true)
    }

    /// A step is done: its ciphertext goes out, and the handshake goes on, ends or fails.
    private func stepped(_ index: Int, _ state: TLSStream.HandshakeState) {
        flush(index)
        switch state {
        case .inProgress:
            armHandshakeReceive(index)
        case .established:
            established(index)
        case .failed(let failure):
            failHandshake(index, reason: failure.description)
        }
    }

    /// The handshake succeeded: the client's session starts over the stream;
    /// main's or a mirror's connect completes, to the session.
    private func established(_ index: Int) {
        legs[index].phase = .established
        establishedMs[index] = max(1, context.nowMs)
        handshakesInProgress -= 1
        if let connectTag = legs[index].connectTag {
            legs[index].connectTag = nil
            deliverToSession(connectTag, result: 0, slot: nil)
            return
        }
        context.stats.tlsHandshakesActive.drop()
        let fd = legs[index].fd
        table.withSession(at: legs[index].session) { session in
            session.start(clientFD: fd, io: self)
            if !session.isActive { table.free(session) }
        }
    }

    /// Main's or a mirror's handshake failed: to the session, its connect
    /// failed (main's ends the session as `main_connect_failure`, a
    /// mirror's drops it for the session); the session then closes it.
    private func failUpstreamHandshake(_ index: Int, reason: String) {
        guard legs[index].phase == .handshaking, let connectTag = legs[index].connectTag else { return }
        handshakesInProgress -= 1
        legs[index].connectTag = nil
        legs[index].phase = .established
        legs[index].sendError = -EPROTO
        if failureLog.allow(nowMs: context.nowMs) {
            logger.warning("TLS handshake with \(legs[index].leg) failed: \(reason)\(failureLog.suppressedNote)")
        }
        // Queued: a cancel by the session itself gets here (never a completion inside its own request).
        enqueue(connectTag, result: legs[index].cancelled ? -ECANCELED : -EPROTO)
    }

    /// Ends a client whose handshake failed: nothing reached main or a
    /// mirror; its place goes back to the table.
    private func failHandshake(_ index: Int, reason: String, badProxyHeader: Bool = false) {
        guard legs[index].phase == .handshaking else { return }
        if legs[index].connectTag != nil { return failUpstreamHandshake(index, reason: reason) }
        handshakesInProgress -= 1
        let stats = context.stats
        stats.tlsHandshakesActive.drop()
        // Counted as a session that ended, so that accepted = ended + active holds.
        stats.sessionsAccepted.bump()
        if badProxyHeader { stats.sessionsEndedByBadProxyHeader.bump() } else { stats.sessionsEndedByTLSHandshake.bump() }
        if failureLog.allow(nowMs: context.nowMs) {
            let peer = backend.addresses(fd: legs[index].fd)?.source.description ?? "a client"
            logger.notice("TLS handshake with \(peer) failed: \(reason)\(failureLog.suppressedNote)")
        }
        legs[index].phase = .closing
        let session = table.withSession(at: legs[index].session) { $0 }
        letGo(index, closeTag: legs[index].tag(.close))
        table.free(session)
    }

    /// Once a tick: handshakes past their deadline fail; those that found
    /// no slot try again; on an abort, every handshake ends.
    func tick(aborting: Bool) {
        guard handshakesInProgress > 0 else { return }
        // A wake that did not come (the thread's socket failed) costs a tick at most.
        takeSteps()
        for index in legs.indices where legs[index].phase == .handshaking {
            if aborting || context.nowMs >= legs[index].handshakeDeadlineMs {
                failHandshake(index, reason: aborting ? "the proxy stopped" : "not done within --tls-handshake-timeout")
            } else if legs[index].waitsForBuffer {
                legs[index].waitsForBuffer = false
                armHandshakeReceive(index)
            }
        }
    }

    // MARK: - Ciphertext out

    /// Sends what the stream has for the peer, one send at a time; once all
    /// is sent, the session's send and shutdown waiting for it complete.
    private func flush(_ index: Int) {
        guard !legs[index].sending, legs[index].phase == .handshaking || legs[index].phase == .established,
              legs[index].sendError == 0,
              let stream = legs[index].stream, let output = legs[index].output else { return }
        // While the thread steps the stream, its ciphertext waits for the step's end.
        if legs[index].outputStart == legs[index].outputEnd && !legs[index].stepping {
            legs[index].outputStart = 0
            legs[index].outputEnd = stream.takeCiphertext(
                into: UnsafeMutableRawBufferPointer(start: output, count: TLSLeg.outputBytesMax))
        }
        let start = legs[index].outputStart
        let end = legs[index].outputEnd
        if end > start, !legs[index].cancelled {
            legs[index].sending = true
            backend.send(fd: legs[index].fd, from: UnsafeRawPointer(output + start), length: end - start,
                         tag: legs[index].tag(.tlsSend))
            return
        }
        if let tag = legs[index].sessionSendTag {
            legs[index].sessionSendTag = nil
            enqueue(tag, result: Int32(legs[index].sessionSendLength))
        }
        if let tag = legs[index].sessionShutdownTag {
            legs[index].sessionShutdownTag = nil
            backend.shutdownWrite(fd: legs[index].fd, tag: tag)
        }
    }

    private func ciphertextSent(_ index: Int, result: Int32) {
        legs[index].sending = false
        if legs[index].phase == .closing {
            closeIfIdle(index)
            return
        }
        if result > 0 {
            legs[index].outputStart += Int(result)
            flush(index)
            return
        }
        if legs[index].phase == .handshaking {
            failHandshake(index, reason: "send: \(RingError.describe(errno: result == 0 ? EPIPE : -result))")
            return
        }
        // The peer is gone: the session learns it from its send (and its receive).
        let error = result == 0 ? -EPIPE : result
        legs[index].sendError = error
        legs[index].outputStart = 0
        legs[index].outputEnd = 0
        if let tag = legs[index].sessionSendTag {
            legs[index].sessionSendTag = nil
            enqueue(tag, result: error)
        }
        if let tag = legs[index].sessionShutdownTag {
            legs[index].sessionShutdownTag = nil
            enqueue(tag, result: error)
        }
    }

    // MARK: - Closing

    /// The leg's client is done with: closed now, or, while the layer's own
    /// operations are in flight, cancelled and closed when they complete
    /// (its place may take a new client meanwhile).
    private func letGo(_ index: Int, closeTag: CompletionTag) {
        legs[index].phase = .closing
        establishedMs[index] = 0
        legs[index].closeTag = closeTag
        guard legs[index].hasOperationsInFlight else {
            backend.close(fd: legs[index].fd, tag: closeTag)
            legs[index].release()
            return
        }
        if !legs[index].cancelled {
            legs[index].cancelled = true
            backend.cancel(fd: legs[index].fd, tag: legs[index].tag(.cancel))
        }
        draining.append(legs[index])
        // The copy in `draining` owns the output buffer now.
        legs[index].output = nil
        legs[index].release()
    }

    private func closeIfIdle(_ index: Int) {
        guard legs[index].phase == .closing, !legs[index].hasOperationsInFlight else { return }
        backend.close(fd: legs[index].fd, tag: legs[index].closeTag ?? legs[index].tag(.close))
        legs[index].release()
    }

    /// A completion of a leg in `draining`: closed once nothing is in flight.
    private func drained(_ kind: OperationKind, tag: CompletionTag) {
        guard let position = draining.firstIndex(where: {
            $0.session == tag.session && $0.leg.rawValue == tag.leg && $0.generation == tag.generation
        })
        else { return }
        if kind == .tlsRecv { draining[position].receiving = false }
        if kind == .tlsSend { draining[position].sending = false }
        guard !draining[position].hasOperationsInFlight else { return }
        let leg = draining.remove(at: position)
        backend.close(fd: leg.fd, tag: leg.closeTag ?? leg.tag(.close))
        var released = leg
        released.release()
    }

    // MARK: - Completions answered here

    private func enqueue(_ tag: CompletionTag, result: Int32, slot: UInt32? = nil) {
        queued.append(WorkerCompletion(tag: tag, result: result, selectedBuffer: slot))
    }

    /// Delivers the completions queued by the sessions' requests, and those
    /// their handling queues in turn, until none is left.
    func deliverQueued() {
        while queuedHead < queued.count {
            let completion = queued[queuedHead]
            queuedHead += 1
            deliverToSession(completion.tag, result: completion.result, slot: completion.selectedBuffer)
        }
        queued.removeAll(keepingCapacity: true)
        queuedHead = 0
    }

    private func deliverToSession(_ tag: CompletionTag, result: Int32, slot: UInt32?) {
        guard let kind = OperationKind(rawValue: tag.kind) else { return }
        if case .stale = table.deliver(kind, tag: tag, result: result, selectedBuffer: slot, io: self), let slot {
            backend.recycle(slot: slot)
        }
    }

    /// A receive the session asked for on the client came back with
    /// ciphertext (or its end, or an error): decrypted in place into the
    /// same slot, and handed to the session; a record not yet whole asks the socket again.
    func received(tag: CompletionTag, result: Int32, slot: UInt32?) {
        guard let index = place(tag), legs[index].phase == .established, let stream = legs[index].stream,
              table.session(for: tag) != nil else {
            deliverToSession(tag, result: result, slot: slot)
            return
        }
        guard result > 0, let slot else {
            deliverToSession(tag, result: result, slot: slot)
            return
        }
        stream.feed(UnsafeRawBufferPointer(start: pool.pointer(slot), count: Int(result)))
        guard let answer = readPlaintext(index, stream: stream, into: slot) else {
            if legs[index].cancelled {
                deliverToSession(tag, result: -ECANCELED, slot: nil)
            } else {
                backend.recv(fd: legs[index].fd, tag: tag)
            }
            return
        }
        deliverToSession(tag, result: answer.result, slot: answer.slot)
    }

    /// Decrypts what `stream` holds into `slot`, for the session's receive:
    /// its result and the slot that holds the bytes (the slot goes back to
    /// the pool when it holds none); nil when no record is whole yet.
    private func readPlaintext(_ index: Int, stream: TLSStream, into slot: UInt32) -> (result: Int32, slot: UInt32?)? {
        let outcome = stream.read(into: UnsafeMutableRawBufferPointer(start: pool.pointer(slot), count: pool.slotSize))
        // A read may answer the peer (a key update, session tickets' acknowledgement).
        flush(index)
        if case .bytes(let count) = outcome { return (Int32(count), slot) }
        backend.recycle(slot: slot)
        switch outcome {
        case .bytes, .needsMore:
            return nil
        case .closed:
            return (0, nil)
        case .failed:
            context.stats.tlsErrors.bump()
            return (-EPROTO, nil)
        }
    }

    /// The TLS leg a session's request is for, if it is one and established.
    @inline(__always)
    private func established(fd: Int32, tag: CompletionTag) -> Int? {
        guard let index = place(tag), legs[index].phase == .established, legs[index].fd == fd else { return nil }
        return index
    }

    // MARK: - SessionIO: the TLS legs through their streams, the others as they are

    public func recv(fd: Int32, tag: CompletionTag) {
        guard let index = established(fd: fd, tag: tag), let stream = legs[index].stream else {
            backend.recv(fd: fd, tag: tag)
            return
        }
        if !legs[index].proxyHeader.isEmpty {
            // `--accept-proxy`: the header read before the handshake comes first.
            guard let slot = backend.takeSlot() else { return enqueue(tag, result: -ENOBUFS) }
            let header = legs[index].proxyHeader
            legs[index].proxyHeader = []
            header.withUnsafeBytes { pool.pointer(slot).copyMemory(from: $0.baseAddress!, byteCount: header.count) }
            return enqueue(tag, result: Int32(header.count), slot: slot)
        }
        guard stream.mayHavePlaintext else {
            backend.recv(fd: fd, tag: tag)
            return
        }
        guard let slot = backend.takeSlot() else { return enqueue(tag, result: -ENOBUFS) }
        guard let answer = readPlaintext(index, stream: stream, into: slot) else {
            backend.recv(fd: fd, tag: tag)
            return
        }
        enqueue(tag, result: answer.result, slot: answer.slot)
    }

    public func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag) {
        guard let index = established(fd: fd, tag: tag), let stream = legs[index].stream else {
            backend.send(fd: fd, slot: slot, offset: offset, length: length, tag: tag)
            return
        }
        guard legs[index].sendError == 0 else { return enqueue(tag, result: legs[index].sendError) }
        guard stream.write(UnsafeRawBufferPointer(start: pool.pointer(slot) + offset, count: length)) else {
            context.stats.tlsErrors.bump()
            return enqueue(tag, result: -EPROTO)
        }
        legs[index].sessionSendTag = tag
        legs[index].sessionSendLength = length
        flush(index)
    }

    public func shutdownWrite(fd: Int32, tag: CompletionTag) {
        guard let index = established(fd: fd, tag: tag), let stream = legs[index].stream,
              legs[index].sendError == 0 else {
            backend.shutdownWrite(fd: fd, tag: tag)
            return
        }
        // Our close_notify before our FIN.
        stream.close()
        legs[index].sessionShutdownTag = tag
        flush(index)
    }

    public func cancel(fd: Int32, tag: CompletionTag) {
        if let index = place(tag), legs[index].fd == fd, legs[index].phase != .idle {
            legs[index].cancelled = true
            if legs[index].phase == .handshaking && legs[index].connectTag != nil {
                // Main's or a mirror's handshake: its connect, to the session, ends cancelled.
                backend.cancel(fd: fd, tag: tag)
                failUpstreamHandshake(index, reason: "cancelled")
                return
            }
        }
        backend.cancel(fd: fd, tag: tag)
    }

    public func close(fd: Int32, tag: CompletionTag) {
        guard let index = place(tag), legs[index].fd == fd, legs[index].phase != .idle else {
            backend.close(fd: fd, tag: tag)
            return
        }
        if legs[index].phase == .connecting {
            legs[index].release()
            backend.close(fd: fd, tag: tag)
            return
        }
        letGo(index, closeTag: tag)
    }

    public func openSocket(for leg: Leg) -> Int32 { backend.openSocket(for: leg) }

    public func connect(fd: Int32, leg: Leg, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        if isEncrypted(leg), let index = place(tag) {
            // Its handshake starts when the connect completes (`connected`).
            precondition(legs[index].phase == .idle, "a TLS leg connected twice")
            legs[index].phase = .connecting
            legs[index].fd = fd
        }
        backend.connect(fd: fd, leg: leg, timeoutMs: timeoutMs, tag: tag, timeoutTag: timeoutTag)
    }

    public func discard(fd: Int32, tag: CompletionTag) { backend.discard(fd: fd, tag: tag) }

    public func send(fd: Int32, from bytes: UnsafeRawPointer, length: Int, tag: CompletionTag) {
        backend.send(fd: fd, from: bytes, length: length, tag: tag)
    }

    public func addresses(fd: Int32) -> ProxyAddresses? { backend.addresses(fd: fd) }

    public func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag) {
        guard let index = established(fd: fd, tag: tag), let stream = legs[index].stream else {
            backend.sendGathered(fd: fd, queue: queue, chunks: chunks, length: length, tag: tag)
            return
        }
        guard legs[index].sendError == 0 else { return enqueue(tag, result: legs[index].sendError) }
        // A mirror's batch: its chunks into records, in order, then one flush.
        for position in 0..<chunks {
            let chunk = queue.chunk(at: position)
            guard stream.write(UnsafeRawBufferPointer(start: pool.pointer(chunk.slot) + Int(chunk.offset),
                                                      count: Int(chunk.length))) else {
                return enqueue(tag, result: -EPROTO)
            }
        }
        legs[index].sessionSendTag = tag
        legs[index].sessionSendLength = length
        flush(index)
    }

    public func wake(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        backend.wake(session: index, atUs: deadlineUs, for: timer)
    }

    public func discardInBatches(fd: Int32) { backend.discardInBatches(fd: fd) }
    public func unsentBytes(fd: Int32) -> Int { backend.unsentBytes(fd: fd) }
    public func recycle(slot: UInt32) { backend.recycle(slot: slot) }
    public func waitForBuffers(session index: UInt32) { backend.waitForBuffers(session: index) }
    public func takeSlot() -> UInt32? { backend.takeSlot() }
}
