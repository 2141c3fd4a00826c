import Glibc
import Logging
import Platform
import Ring
import Synchronization

/// The worker on epoll, for hosts where io_uring is forbidden (a
/// container's default seccomp profile, `kernel.io_uring_disabled`) or
/// missing: the same `WorkerCore` and `Session`s as `Worker`, with
/// io_uring's completions emulated on readiness (a proactor on a reactor).
///
/// Each socket is registered once, edge-triggered, when it is opened or
/// accepted. Its state (`Descriptor`) holds at most one pending receive or
/// discard, one send and one connect, which is all a session asks for at
/// once, and whether it was last seen readable and writable. An operation
/// is tried when it is asked for and, if the socket would block, parked
/// until the socket's next edge. Its completion is queued, never handed to
/// a session inside that session's own call, and the loop delivers the
/// queue to the core as `Worker` delivers CQEs: what a round's deliveries
/// ask for completes in the next round.
///
/// What each operation completes with is io_uring's: a receive takes a
/// slot only when bytes are there (`selectedBuffer`) and completes with
/// -ENOBUFS when none is free; a discard takes up to 1 MiB with
/// MSG_TRUNC; a connect's timeout is a linked timeout (the connect
/// -ECANCELED and the timeout -ETIME, or the timeout -ECANCELED when the
/// connect ends first); `cancel` completes every pending operation of its
/// descriptor with -ECANCELED before its own completion.
final class EpollWorker: KernelBackend {
    private let poller: EpollPoller
    /// The worker's listeners: one, or several after a handover from a
    /// process that had more workers (each has its own accept queue).
    private let listenerFDs: [Int32]
    private var listenersOpen: Bool
    /// A bit per listener that had clients when the accept loop last stopped early.
    private var readableListeners: UInt64 = 0
    private var acceptArmed = false
    /// Clients taken per round at most, so that a burst of them cannot hold up the sessions' completions.
    private static let acceptsPerRound = 256
    /// The worker's logic, and what it runs on (context, table, waiters, timers).
    let core: WorkerCore<EpollWorker>
    let parts: WorkerParts
    let sockets: WorkerSockets
    let stats: WorkerStats, control: WorkerControl
    private let logger: Logger

    // The per-request state is in memory of its own behind pointers, not in
    // arrays in `var`s (docs/contributing.md, "Private storage, public reads").

    /// By descriptor number, `descriptorCapacity` of them (grown, and so
    /// moved, only by `register`); `generation` tells a stale event from one
    /// for a reused number.
    private var descriptors: UnsafeMutablePointer<Descriptor>
    private var descriptorCapacity = EpollWorker.initialCapacity
    /// Completions waiting to be delivered, first first: those from
    /// `completionsHead` up to `completionsEnd`, in `completionsCapacity`.
    private var completions: UnsafeMutablePointer<WorkerCompletion>
    private var completionsCapacity = EpollWorker.initialCapacity
    private static let initialCapacity = 256
    private var completionsHead = 0
    private var completionsEnd = 0
    private var connectDeadlines = ConnectDeadlines()
    /// `connectDeadlines.nextDeadlineMs`, or `.max`: looked at every round,
    /// where a call on the struct would be checked for exclusivity at run time.
    private var nextConnectDeadlineMs = UInt64.max
    private var connectSerial: UInt32 = 0

    /// The slots receives take, not registered, and the free ones, lowest on
    /// top at first so that the pool's resident part grows with the load.
    let pool: BufferPool
    /// A stack of `freeCount` slots, room for all of the pool's.
    private let freeSlots: UnsafeMutablePointer<UInt32>
    private var freeCount: Int
    /// Of the free slots, how many receives may take before the next round,
    /// as with io_uring's window of provided buffers (`ProvidedBuffers`):
    /// topped up to `windowSlots` between rounds; a receive that finds none
    /// completes with -ENOBUFS and its session waits for `resumeReceiving`.
    private var lentSlots = 0
    private let windowSlots: Int
    /// The most slots ever held at once (`duplicator_pool_slots_grown`).
    private var slotsTouched = 0
    private let discardBuffer: UnsafeMutableRawPointer
    /// One byte to peek at when a receive finds no free slot.
    private let peekByte: UnsafeMutableRawPointer

    /// The sessions' timers' wake (`SessionTimers.nextWakeUs`): a timer
    /// descriptor armed for the earliest deadline, rather than a short
    /// timeout on every wait, as the io_uring worker's timeout request (the
    /// short timeout cost the io_uring worker 1 to 6 us per request at
    /// 20 000/s with a mirror). `timerArmedUs`: the deadline armed (0: none).
    private let timer: TimerDescriptor
    private var timerArmedUs: UInt64 = 0

    /// Listener `index`'s token is `listenerTokenBase + index`: above any
    /// socket's (whose low half is a descriptor number, below 2^31).
    private static let listenerTokenBase = UInt64.max - 63
    /// The sessions' timers' wake (`timer`): below the listeners', above any socket's.
    private static let timerToken = listenerTokenBase - 1
    private static let socketEvents = EpollFlag.readable | EpollFlag.writable | EpollFlag.peerShutdown | EpollFlag.edgeTriggered

    init(_ environment: WorkerEnvironment) throws {
        let config = environment.config
        let listenerFDs = environment.listenerFDs
        precondition(listenerFDs.count <= 64, "at most 64 listeners per worker")
        stats = environment.stats
        control = environment.control
        logger = environment.logger
        self.listenerFDs = listenerFDs
        listenersOpen = !listenerFDs.isEmpty
        poller = try EpollPoller(eventCapacity: 256)
        timer = try TimerDescriptor()
        try poller.add(timer.fd, flags: EpollFlag.readable | EpollFlag.edgeTriggered, token: Self.timerToken)
        if config.zeroCopy == .on {
            throw ProxyError("--zerocopy on: zero-copy sends need the io_uring backend, and this worker runs on epoll")
        }
        sockets = try WorkerSockets(config: config, targets: environment.targets, loopGuard: environment.loopGuard,
                                    stats: stats, logger: logger, nonBlocking: true)
        pool = try BufferPool(slotSize: config.slotSize, slotCount: config.poolSlotsPerWorker)
        windowSlots = config.providedWindowSlotsPerWorker
        parts = try WorkerParts(environment, pool: pool)
        discardBuffer = .allocate(byteCount: IOUringWorker.discardBufferBytes, alignment: 4096)
        freeSlots = .allocate(capacity: pool.slotCount)
        for index in 0..<pool.slotCount { freeSlots[index] = UInt32(pool.slotCount - 1 - index) }
        freeCount = pool.slotCount
        descriptors = .allocate(capacity: Self.initialCapacity)
        descriptors.initialize(repeating: Descriptor(), count: Self.initialCapacity)
        completions = .allocate(capacity: Self.initialCapacity)
        peekByte = .allocate(byteCount: 1, alignment: 1)
        core = parts.core(environment)
        for (index, listenerFD) in listenerFDs.enumerated() {
            // Shared with the process it came from after a handover: io_uring's
            // accept polls a non-blocking listener too (Linux 6.18 checked).
            let flags = fcntl(listenerFD, F_GETFL)
            _ = fcntl(listenerFD, F_SETFL, flags | O_NONBLOCK)
            do {
                try poller.add(listenerFD, flags: EpollFlag.readable | EpollFlag.edgeTriggered,
                               token: Self.listenerTokenBase + UInt64(index))
            } catch {
                throw SystemCallError(operation: "epoll_ctl(ADD) of the listener", errorNumber: error.errorNumber)
            }
        }
    }

    deinit {
        descriptors.deinitialize(count: descriptorCapacity)
        descriptors.deallocate()
        (completions + completionsHead).deinitialize(count: completionsEnd - completionsHead)
        completions.deallocate()
        freeSlots.deallocate()
        discardBuffer.deallocate()
        peekByte.deallocate()
        closeListener()
    }

    // MARK: - The loop

    func run() {
        context.nowMs = MonotonicClock.coarseMs()
        context.nowUs = MonotonicClock.nowMicros()
        core.start(io: self)
        while true {
            lendSlots()
            armTimer()
            let count = poller.wait(timeoutNanos: waitNanoseconds())
            startRound()
            takeEdges(count)
            deliverQueued()
            lendSlots()
            if finishRound() { break }
        }
        closeListener()
    }

    /// Arms the timers' wake for the earliest deadline, unless one as early is armed.
    private func armTimer() {
        guard let deadlineUs = parts.timers.nextWakeUs, timerArmedUs == 0 || deadlineUs < timerArmedUs else { return }
        let nowUs = MonotonicClock.nowMicros()
        timer.arm(afterNanoseconds: deadlineUs > nowUs ? Int64(deadlineUs - nowUs) * 1000 : 1)
        timerArmedUs = deadlineUs
    }

    /// What became ready: the sockets' edges, the clients waiting, the connects timed out.
    private func takeEdges(_ count: Int) {
        for index in 0..<count { ready(poller.event(at: index)) }
        if acceptArmed && readableListeners != 0 { acceptClients() }
        if context.nowMs >= nextConnectDeadlineMs { expireConnects() }
    }

    /// One round without the core, for the tests of the emulation: the
    /// edges that come within `timeoutNanoseconds` (none to wait for when
    /// completions are queued), taken; the completions queued, handed back
    /// instead of delivered.
    func completionsOfOneRound(timeoutNanoseconds: UInt64) -> [WorkerCompletion] {
        lendSlots()
        let count = poller.wait(timeoutNanos: completionsHead == completionsEnd ? timeoutNanoseconds : 0)
        context.nowMs = MonotonicClock.coarseMs()
        takeEdges(count)
        let queued = Array(UnsafeBufferPointer(start: completions + completionsHead, count: completionsEnd - completionsHead))
        (completions + completionsHead).deinitialize(count: completionsEnd - completionsHead)
        completionsHead = 0
        completionsEnd = 0
        return queued
    }

    /// Not at all while completions, clients or handshakes wait; else until the tick
    /// or a connect timeout, whichever comes first (the sessions' timers wake it through `timer`).
    private func waitNanoseconds() -> UInt64 {
        if completionsHead < completionsEnd || (acceptArmed && readableListeners != 0) || core.hasWorkWaiting { return 0 }
        let nowMs = MonotonicClock.coarseMs()
        var nanoseconds = (core.nextTickMs > nowMs ? core.nextTickMs - nowMs : 0) * 1_000_000
        if nextConnectDeadlineMs != .max {
            nanoseconds = min(nanoseconds, nextConnectDeadlineMs > nowMs ? (nextConnectDeadlineMs - nowMs) * 1_000_000 : 0)
        }
        return nanoseconds
    }

    /// Hands this round's completions to the core; what they ask for
    /// completes in the next round, as with a ring.
    private func deliverQueued() {
        let end = completionsEnd
        while completionsHead < end {
            // Taken out before the call: what it asks for is queued behind.
            let completion = (completions + completionsHead).move()
            completionsHead += 1
            core.deliver(completion, io: self)
        }
        // What those calls queued moves to the front, for the next round.
        let waiting = completionsEnd - completionsHead
        if waiting > 0 { completions.moveInitialize(from: completions + completionsHead, count: waiting) }
        completionsHead = 0
        completionsEnd = waiting
    }

    @inline(__always)
    private func lendSlots() { lentSlots = min(windowSlots, freeCount) }

    @inline(__always)
    private func complete(_ tag: CompletionTag, _ result: Int32, slot: UInt32? = nil, hasMore: Bool = false) {
        if completionsEnd == completionsCapacity { makeRoomForCompletions() }
        (completions + completionsEnd).initialize(to: WorkerCompletion(tag: tag, result: result, selectedBuffer: slot,
                                                                       hasMore: hasMore))
        completionsEnd += 1
    }

    /// The queue is full at its end: twice the room, those waiting at the
    /// same places (`deliverQueued` may be going through them).
    private func makeRoomForCompletions() {
        let moved = UnsafeMutablePointer<WorkerCompletion>.allocate(capacity: completionsCapacity * 2)
        (moved + completionsHead).moveInitialize(from: completions + completionsHead, count: completionsEnd - completionsHead)
        completions.deallocate()
        completions = moved
        completionsCapacity *= 2
    }

    /// One descriptor's edge: what it is ready for, then what waited for it.
    private func ready(_ event: EpollPoller.Event) {
        if event.token == Self.timerToken {
            // The round's end fires what is due (`afterCompletions`).
            timer.clear()
            timerArmedUs = 0
            return
        }
        if event.token >= Self.listenerTokenBase {
            readableListeners |= 1 << (event.token - Self.listenerTokenBase)
            return
        }
        let fd = Int32(truncatingIfNeeded: event.token & 0xFFFF_FFFF)
        let generation = UInt32(truncatingIfNeeded: event.token >> 32)
        guard Int(fd) < descriptorCapacity, descriptors[Int(fd)].generation == generation,
              descriptors[Int(fd)].registered else { return }
        let flags = event.flags
        let broken = flags & (EpollFlag.error | EpollFlag.hangUp) != 0
        if broken || flags & EpollFlag.peerShutdown != 0 {
            // EOF and errors stay: every later receive finds them at once.
            descriptors[Int(fd)].peerClosed = true
        }
        if broken || flags & EpollFlag.readable != 0 { descriptors[Int(fd)].readable = true }
        if broken || flags & EpollFlag.writable != 0 { descriptors[Int(fd)].writable = true }
        if descriptors[Int(fd)].connect != nil && (broken || flags & EpollFlag.writable != 0) { finishConnect(fd) }
        tryReceive(fd)
        trySend(fd)
    }

    // MARK: - Descriptors

    private func register(_ fd: Int32) -> Int32 {
        let index = Int(fd)
        if index >= descriptorCapacity { growDescriptors(toHold: index) }
        descriptors[index].reset(registered: true)
        let token = UInt64(descriptors[index].generation) << 32 | UInt64(UInt32(bitPattern: fd))
        do {
            try poller.add(fd, flags: Self.socketEvents, token: token)
        } catch {
            descriptors[index].reset(registered: false)
            return -error.errorNumber
        }
        return 0
    }

    /// Readiness is how this backend receives: a descriptor must be in the poll set first.
    func watch(fd: Int32) -> Bool { register(fd) == 0 }

    /// Room for descriptor number `index` at least: twice as many, moved.
    private func growDescriptors(toHold index: Int) {
        let capacity = max(index + 1, descriptorCapacity * 2)
        let moved = UnsafeMutablePointer<Descriptor>.allocate(capacity: capacity)
        moved.moveInitialize(from: descriptors, count: descriptorCapacity)
        (moved + descriptorCapacity).initialize(repeating: Descriptor(), count: capacity - descriptorCapacity)
        descriptors.deallocate()
        descriptors = moved
        descriptorCapacity = capacity
    }

    /// `fd` is closed: its number may come back for another socket.
    private func forget(_ fd: Int32) {
        guard Int(fd) < descriptorCapacity else { return }
        descriptors[Int(fd)].reset(registered: false)
    }

    // MARK: - Accepting

    func armAccept() -> Bool {
        guard listenersOpen else { return false }
        acceptArmed = true
        // Clients may wait already: an edge-triggered listener would not say so again.
        readableListeners = listenerFDs.count == 64 ? .max : (1 << UInt64(listenerFDs.count)) - 1
        acceptClients()
        return true
    }

    /// Takes the clients waiting, each one completion as a multishot accept
    /// gives them, one from each readable listener in turn; an error ends
    /// the accept of all (the core arms it again).
    private func acceptClients() {
        var taken = 0
        while acceptArmed && readableListeners != 0 && taken < Self.acceptsPerRound {
            for index in listenerFDs.indices where readableListeners & (1 << index) != 0 {
                let fd = acceptNonBlocking(listenerFDs[index])
                if fd < 0 {
                    let error = errno
                    if error == EAGAIN || error == EWOULDBLOCK {
                        readableListeners &= ~(1 << index)
                        continue
                    }
                    if error == EINTR || error == ECONNABORTED { continue }
                    acceptArmed = false
                    complete(WorkerCore<EpollWorker>.acceptTag, -error)
                    return
                }
                taken += 1
                let registered = register(fd)
                if registered < 0 {
                    Glibc.close(fd)
                    complete(WorkerCore<EpollWorker>.acceptTag, registered, hasMore: true)
                    continue
                }
                complete(WorkerCore<EpollWorker>.acceptTag, fd, hasMore: true)
            }
        }
    }

    func cancelAccept() {
        if acceptArmed {
            acceptArmed = false
            complete(WorkerCore<EpollWorker>.acceptTag, -ECANCELED)
            complete(WorkerCore<EpollWorker>.acceptCancelTag, 0)
        } else {
            complete(WorkerCore<EpollWorker>.acceptCancelTag, -ENOENT)
        }
    }

    func closeListener() {
        guard listenersOpen else { return }
        for listenerFD in listenerFDs {
            _ = try? poller.remove(listenerFD)
            Glibc.close(listenerFD)
        }
        listenersOpen = false
        readableListeners = 0
        acceptArmed = false
    }

    // MARK: - WorkerBackend

    var buffersLent: Bool { lentSlots > 0 }

    /// The slot was taken off the free list when the bytes were received.
    @inline(__always)
    func bufferTaken(_ slot: UInt32) {}

    func refuse(fd: Int32) {
        sockets.forgetLoopRecord(fd)
        forget(fd)
        Glibc.close(fd)
    }

    func tick(nowMs: UInt64) {
        stats.poolSlotsInUse.store(UInt64(pool.inUse), ordering: .relaxed)
        stats.poolSlotsGrown.store(UInt64(slotsTouched), ordering: .relaxed)
    }

    // MARK: - SessionIO: connecting

    func openSocket(for leg: Leg) -> Int32 {
        let fd = sockets.openSocket(for: leg)
        guard fd >= 0 else { return fd }
        let registered = register(fd)
        guard registered == 0 else {
            Glibc.close(fd)
            return registered
        }
        return fd
    }

    func connect(fd: Int32, leg: Leg, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag) {
        let (address, length) = sockets.connecting(fd: fd, leg: leg)
        var pending = PendingConnect(tag: tag, timeoutTag: timeoutMs > 0 ? timeoutTag : nil, serial: 0)
        if Glibc.connect(fd, address, length) == 0 {
            connectEnded(pending, result: 0)
            return
        }
        let error = errno
        guard error == EINPROGRESS || error == EINTR else {
            connectEnded(pending, result: -error)
            return
        }
        connectSerial &+= 1
        pending.serial = connectSerial
        descriptors[Int(fd)].connect = pending
        // What epoll said of the socket before it was connecting (an unconnected socket hangs up) is void.
        descriptors[Int(fd)].peerClosed = false
        if timeoutMs > 0 {
            let deadlineMs = context.nowMs + UInt64(timeoutMs)
            connectDeadlines.add(fd: fd, serial: connectSerial, deadlineMs: deadlineMs, timeoutMs: timeoutMs)
            nextConnectDeadlineMs = min(nextConnectDeadlineMs, deadlineMs)
        }
    }

    /// Writable or broken while connecting: the outcome, if there is one yet.
    private func finishConnect(_ fd: Int32) {
        guard let pending = descriptors[Int(fd)].connect else { return }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { error = errno }
        if error == 0 && Sockets.peerAddress(fd) == nil { return }  // not connected yet
        descriptors[Int(fd)].connect = nil
        connectEnded(pending, result: -error)
    }

    /// The connect's completion, then its linked timeout's, cancelled.
    private func connectEnded(_ pending: PendingConnect, result: Int32) {
        complete(pending.tag, result)
        if let timeoutTag = pending.timeoutTag { complete(timeoutTag, -ECANCELED) }
    }

    /// Connects whose timeout has come: cancelled, as a linked timeout does.
    private func expireConnects() {
        while let (fd, serial) = connectDeadlines.popDue(nowMs: context.nowMs) {
            guard Int(fd) < descriptorCapacity, let pending = descriptors[Int(fd)].connect, pending.serial == serial else { continue }
            descriptors[Int(fd)].connect = nil
            complete(pending.tag, -ECANCELED)
            if let timeoutTag = pending.timeoutTag { complete(timeoutTag, -ETIME) }
        }
        nextConnectDeadlineMs = connectDeadlines.nextDeadlineMs ?? .max
    }

    // MARK: - SessionIO: receiving

    @inline(__always)
    func recv(fd: Int32, tag: CompletionTag) {
        descriptors[Int(fd)].receive = PendingReceive(tag: tag, discard: false)
        tryReceive(fd)
    }

    /// TCP discards received bytes for a recv with MSG_TRUNC instead of
    /// copying them (tcp(7)), as in `IOUringWorker.discard`.
    @inline(__always)
    func discard(fd: Int32, tag: CompletionTag) {
        descriptors[Int(fd)].receive = PendingReceive(tag: tag, discard: true)
        tryReceive(fd)
    }

    private func tryReceive(_ fd: Int32) {
        let index = Int(fd)
        guard let pending = descriptors[index].receive, descriptors[index].readable else { return }
        var slot: UInt32?
        if !pending.discard && lentSlots > 0 {
            freeCount -= 1
            slot = freeSlots[freeCount]
            lentSlots -= 1
        }
        var result: Int
        repeat {
            if pending.discard {
                result = Glibc.recv(fd, discardBuffer, IOUringWorker.discardBytesMax, Int32(MSG_TRUNC))
            } else if let slot {
                result = Glibc.recv(fd, pool.pointer(slot), pool.slotSize, 0)
            } else {
                // No free slot: io_uring's provided buffers say -ENOBUFS only once bytes are there.
                result = Glibc.recv(fd, peekByte, 1, Int32(MSG_PEEK))
                if result > 0 { result = -Int(ENOBUFS) }
            }
        } while result == -1 && errno == EINTR
        if result == -1 {
            let error = errno
            if error == EAGAIN || error == EWOULDBLOCK {
                if let taken = slot { giveBack(taken) }
                descriptors[index].readable = false
                return  // parked until the next edge
            }
            result = -Int(error)
        }
        if result <= 0, let taken = slot {
            giveBack(taken)
            slot = nil
        }
        if slot != nil { slotsTouched = max(slotsTouched, pool.slotCount - freeCount) }
        // A short read took all there was: the next bytes come with an edge.
        let length = pending.discard ? IOUringWorker.discardBytesMax : pool.slotSize
        if result > 0 && result < length && !descriptors[index].peerClosed { descriptors[index].readable = false }
        descriptors[index].receive = nil
        complete(pending.tag, Int32(truncatingIfNeeded: result), slot: slot)
    }

    /// A slot taken for a receive that brought no bytes: still lent.
    @inline(__always)
    private func giveBack(_ slot: UInt32) {
        pushFree(slot)
        lentSlots += 1
    }

    @inline(__always)
    private func pushFree(_ slot: UInt32) {
        precondition(freeCount < pool.slotCount, "a slot recycled twice")
        freeSlots[freeCount] = slot
        freeCount += 1
    }

    // MARK: - SessionIO: sending

    @inline(__always)
    func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag) {
        descriptors[Int(fd)].send = PendingSend(tag: tag, bytes: UnsafeRawPointer(pool.pointer(slot) + offset), length: length,
                                                message: nil)
        trySend(fd)
    }

    func send(fd: Int32, from bytes: UnsafeRawPointer, length: Int, tag: CompletionTag) {
        descriptors[Int(fd)].send = PendingSend(tag: tag, bytes: bytes, length: length, message: nil)
        trySend(fd)
    }

    @inline(__always)
    func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag) {
        let message = sockets.gatherMessage(tag: tag, queue: queue, chunks: chunks, pool: pool)
        descriptors[Int(fd)].send = PendingSend(tag: tag, bytes: nil, length: length, message: message)
        trySend(fd)
    }

    private func trySend(_ fd: Int32) {
        let index = Int(fd)
        guard let pending = descriptors[index].send, descriptors[index].writable else { return }
        var result: Int
        repeat {
            result = if let message = pending.message {
                sendmsg(fd, message, Int32(MSG_NOSIGNAL))
            } else {
                Glibc.send(fd, pending.bytes, pending.length, Int32(MSG_NOSIGNAL))
            }
        } while result < 0 && errno == EINTR
        if result < 0 {
            let error = errno
            if error == EAGAIN || error == EWOULDBLOCK {
                descriptors[index].writable = false
                return  // parked until the next edge
            }
            result = -Int(error)
        } else if result < pending.length {
            // The socket's buffer is full: more room comes with an edge.
            descriptors[index].writable = false
        }
        descriptors[index].send = nil
        complete(pending.tag, Int32(truncatingIfNeeded: result))
    }

    // MARK: - SessionIO: the rest

    func shutdownWrite(fd: Int32, tag: CompletionTag) {
        sockets.shuttingDown(fd: fd, tag: tag)
        complete(tag, Glibc.shutdown(fd, Int32(SHUT_WR)) == 0 ? 0 : -errno)
        if Leg(tag).isMirror {
            // SO_RCVLOWAT may have just been lowered: what waits can be discarded now.
            descriptors[Int(fd)].readable = true
            tryReceive(fd)
        }
    }

    func cancel(fd: Int32, tag: CompletionTag) {
        let index = Int(fd)
        var cancelled: Int32 = 0
        if let pending = descriptors[index].receive {
            descriptors[index].receive = nil
            complete(pending.tag, -ECANCELED)
            cancelled += 1
        }
        if let pending = descriptors[index].send {
            descriptors[index].send = nil
            complete(pending.tag, -ECANCELED)
            cancelled += 1
        }
        if let pending = descriptors[index].connect {
            descriptors[index].connect = nil
            complete(pending.tag, -ECANCELED)
            if let timeoutTag = pending.timeoutTag { complete(timeoutTag, -ECANCELED) }
            cancelled += 1
        }
        complete(tag, cancelled > 0 ? cancelled : -ENOENT)
    }

    func close(fd: Int32, tag: CompletionTag) {
        sockets.forgetLoopRecord(fd)
        forget(fd)
        complete(tag, Glibc.close(fd) == 0 ? 0 : -errno)
    }

    @inline(__always)
    func recycle(slot: UInt32) {
        pushFree(slot)
    }

    /// A free slot for bytes no receive brought (`--tls-cert`): taken from
    /// the free list, the receives' window shrinking with it if need be.
    func takeSlot() -> UInt32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        lentSlots = min(lentSlots, freeCount)
        slotsTouched = max(slotsTouched, pool.slotCount - freeCount)
        return freeSlots[freeCount]
    }
}

// MARK: - Pending operations

extension EpollWorker {
    struct PendingReceive {
        var tag: CompletionTag
        /// Into scratch, discarded, rather than into a slot.
        var discard: Bool
    }

    struct PendingSend {
        var tag: CompletionTag
        /// A plain send's bytes, or a gathered send's message.
        var bytes: UnsafeRawPointer?
        var length: Int
        var message: UnsafeMutablePointer<msghdr>?
    }

    struct PendingConnect {
        var tag: CompletionTag
        /// The linked timeout's tag, if the connect has one.
        var timeoutTag: CompletionTag?
        /// Tells this connect's deadline from an earlier one of the same descriptor.
        var serial: UInt32
    }

    /// One registered socket: its operations waiting for readiness, and the
    /// readiness last seen (an edge sets it; EAGAIN or a short transfer clears it).
    struct Descriptor {
        var generation: UInt32 = 0
        var registered = false
        var readable = false
        var writable = false
        /// EOF or an error was seen: reading never blocks again.
        var peerClosed = false
        var receive: PendingReceive?
        var send: PendingSend?
        var connect: PendingConnect?

        /// A new socket is tried at once (bytes may be there already); an
        /// EAGAIN then waits for the edge.
        mutating func reset(registered: Bool) {
            generation &+= 1
            self.registered = registered
            readable = registered
            writable = registered
            peerClosed = false
            receive = nil
            send = nil
            connect = nil
        }
    }
}
