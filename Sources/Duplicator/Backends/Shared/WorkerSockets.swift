import Glibc
import Logging
import Platform
import Ring
import Synchronization

/// What both backends of a worker (`Worker` on io_uring, `EpollWorker` on
/// epoll) do alike around their loops: the targets' addresses, the loop
/// guard's records, the memory of gathered mirror sends, and the socket
/// options that the sessions' operations imply. One per worker thread.
final class WorkerSockets {
    /// Main's address, then each mirror slot's (`MirrorSlots`): a slot
    /// keeps its address once taken, so a live session's never changes.
    private(set) var targets: [SocketAddress]
    /// The current configuration generation's (socket options of new sessions' legs).
    private var config: Config
    private let mirrorSlotCount: Int
    /// Some generation set SO_RCVLOWAT on mirror sockets: lower it at their shutdown.
    private var lowWaterEverSet: Bool
    private let loopGuard: LoopGuard
    private let stats: WorkerStats
    private let logger: Logger
    /// Sockets are opened non-blocking (the epoll backend) or blocking
    /// (io_uring, see `Sockets.openStream`).
    private let nonBlocking: Bool
    /// The targets' addresses in memory that stays put: the kernel reads a
    /// connect's address when its SQE is submitted, which may be later.
    /// One `sockaddr_storage`'s room each, bound to `sockaddr` (the type it
    /// is handed out as), filled with the address's bytes.
    private let targetAddresses: UnsafeMutableRawPointer
    private static let addressStride = MemoryLayout<sockaddr_storage>.stride
    /// What this worker recorded with the loop guard, by descriptor,
    /// forgotten when closed (empty unless a loop was suspected).
    private var loopRecords: [Int32: LoopRecord] = [:]
    private enum LoopRecord {
        case connecting
        case outbound(LoopGuard.Connection)
        case suspect(LoopGuard.Connection)
    }
    private var loopLog = RateLimitedLog(intervalMs: 10_000)
    /// Gathered mirror sends: a msghdr and `Session.gatherChunksMax` iovec
    /// entries per (session, mirror), read by the kernel until the send
    /// completes. An anonymous mapping: only pages that sends use become resident.
    private let gatherMessages: UnsafeMutablePointer<msghdr>
    private let gatherVectors: UnsafeMutablePointer<iovec>
    private let gatherMemory: UnsafeMutableRawPointer
    private let gatherMemoryBytes: Int

    init(config: Config, targets: [SocketAddress], loopGuard: LoopGuard, stats: WorkerStats, logger: Logger,
         nonBlocking: Bool) throws(SystemCallError) {
        self.config = config
        mirrorSlotCount = config.mirrorSlotCount
        lowWaterEverSet = config.mirrorReceiveLowWaterBytes > 0
        precondition(targets.count == 1 + config.mirrorSlotCount, "main's address and one per mirror slot")
        self.targets = targets
        self.loopGuard = loopGuard
        self.stats = stats
        self.logger = logger
        self.nonBlocking = nonBlocking
        let gatherLegs = max(1, config.sessionsPerWorker * config.mirrorSlotCount)
        let messagesBytes = gatherLegs * MemoryLayout<msghdr>.stride
        let vectorsOffset = (messagesBytes + 15) & ~15
        gatherMemoryBytes = vectorsOffset + gatherLegs * Session.gatherChunksMax * MemoryLayout<iovec>.stride
        guard let gatherMemory = mmap(nil, gatherMemoryBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              gatherMemory != MAP_FAILED else {
            throw SystemCallError(operation: "mmap of \(gatherMemoryBytes) bytes for gathered mirror sends", errorNumber: errno)
        }
        self.gatherMemory = gatherMemory
        gatherMessages = gatherMemory.bindMemory(to: msghdr.self, capacity: gatherLegs)
        gatherVectors = (gatherMemory + vectorsOffset).bindMemory(to: iovec.self, capacity: gatherLegs * Session.gatherChunksMax)
        targetAddresses = .allocate(byteCount: max(1, targets.count) * Self.addressStride,
                                    alignment: MemoryLayout<sockaddr_storage>.alignment)
        for (index, target) in targets.enumerated() { store(target, at: index) }
    }

    /// Writes `address` into target `index`'s room, bound to `sockaddr`.
    private func store(_ address: SocketAddress, at index: Int) {
        let entry = targetAddresses + index * Self.addressStride
        withUnsafeBytes(of: address.storage) { entry.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        entry.bindMemory(to: sockaddr.self, capacity: 1)
    }

    deinit {
        munmap(gatherMemory, gatherMemoryBytes)
        targetAddresses.deallocate()
    }

    // MARK: - Opening and connecting

    func openSocket(for leg: Leg) -> Int32 {
        let fd = Sockets.openStream(family: targets[leg.targetIndex].family, nonBlocking: nonBlocking)
        // While a mirror's first turns are kept, each reply must wake its
        // discard; the session asks for batches (`discardInBatches`) after.
        if leg.isMirror && fd >= 0 && config.mirrorReceiveLowWaterBytes > 0 && config.mirrorTurns == 0 {
            Sockets.setReceiveLowWater(fd, bytes: config.mirrorReceiveLowWaterBytes)
        }
        return fd
    }

    /// `leg`'s address for connect(2), and records the connect with the
    /// loop guard when it is armed.
    func connecting(fd: Int32, leg: Leg) -> (address: UnsafePointer<sockaddr>, length: socklen_t) {
        let target = leg.targetIndex
        if loopGuard.isArmed {
            loopGuard.connecting(fd: fd, to: targets[target])
            loopRecords[fd] = .connecting
        }
        let address = UnsafePointer((targetAddresses + target * Self.addressStride).assumingMemoryBound(to: sockaddr.self))
        return (address, targets[target].length)
    }

    /// A reload: new sessions' sockets follow `generation`; a slot taken
    /// since gets its address (nothing live uses that slot yet).
    func adopt(_ generation: ConfigGeneration) {
        config = generation.config
        lowWaterEverSet = lowWaterEverSet || config.mirrorReceiveLowWaterBytes > 0
        for (slot, address) in generation.slotAddresses.enumerated() {
            guard let address, 1 + slot < targets.count, targets[1 + slot].description != address.description else { continue }
            targets[1 + slot] = address
            store(address, at: 1 + slot)
        }
    }

    // MARK: - Options the sessions' operations imply

    func discardInBatches(fd: Int32) {
        if config.mirrorReceiveLowWaterBytes > 0 { Sockets.setReceiveLowWater(fd, bytes: config.mirrorReceiveLowWaterBytes) }
    }

    /// Before `shutdown(SHUT_WR)` of `tag`'s leg.
    func shuttingDown(fd: Int32, tag: CompletionTag) {
        if Leg(tag).isMirror && lowWaterEverSet {
            // The mirror has the whole stream: from now on discard its replies
            // as they come (lowering SO_RCVLOWAT wakes the discard for what
            // waits), so that closing it at the end of its linger finds no
            // reply unread, which would turn the FIN into a reset and drop
            // what the kernel has yet to deliver.
            Sockets.setReceiveLowWater(fd, bytes: 1)
        }
    }

    /// SIOCOUTQ (linux/sockios.h, equal to TIOCOUTQ), which Glibc's module does not export.
    private static let socketOutputQueueRequest: UInt = 0x5411

    func unsentBytes(fd: Int32) -> Int {
        var count: Int32 = 0
        return ioctl(fd, Self.socketOutputQueueRequest, &count) == 0 ? Int(count) : 0
    }

    // MARK: - Gathered sends

    /// The message of one gathered send of `tag`'s mirror leg: the first
    /// `chunks` chunks of `queue`. One per (session, mirror): one send in
    /// flight per leg.
    @inline(__always)
    func gatherMessage(tag: CompletionTag, queue: SendQueue, chunks: Int, pool: BufferPool) -> UnsafeMutablePointer<msghdr> {
        let leg = Int(tag.session) &* mirrorSlotCount &+ Leg(tag).mirrorIndex
        let vectors = gatherVectors + leg &* Session.gatherChunksMax
        for position in 0..<chunks {
            let chunk = queue.chunk(at: position)
            vectors[position] = iovec(iov_base: pool.pointer(chunk.slot) + Int(chunk.offset), iov_len: Int(chunk.length))
        }
        let message = gatherMessages + leg
        message.pointee = msghdr()
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = chunks
        return message
    }

    // MARK: - Loops made at run time

    /// Whether `address` is one of this host's.
    func isLocal(_ address: SocketAddress) -> Bool { loopGuard.isLocal(address) }

    var loopCheckNeeded: Bool { loopGuard.isArmed || !loopRecords.isEmpty }

    /// Asks the loop guard about a client from this host that was addressed
    /// to one of our targets; records it (until closed) unless it is one of
    /// our own connections, which is refused and logged.
    func isLoop(acceptedFD fd: Int32, nowMs: UInt64) -> Bool {
        guard let peer = Sockets.peerAddress(fd), loopGuard.isLocal(peer),
              let destination = Sockets.originalDestination(fd, family: peer.family),
              let suspect = loopGuard.suspect(source: peer, destination: destination) else { return false }
        if loopGuard.accepted(suspect, localAddress: Sockets.localAddress) {
            logLoop(destination: destination, nowMs: nowMs)
            return true
        }
        loopRecords[fd] = .suspect(suspect)
        return false
    }

    /// Tells the loop guard that a session's outbound connect ended; true if
    /// it already arrived at our listener (the session then fails it).
    func connectLooped(fd: Int32, leg: Leg, result: Int32, nowMs: UInt64) -> Bool {
        let target = leg.targetIndex
        var wasConnecting = false
        if case .connecting = loopRecords[fd] {
            loopRecords[fd] = nil
            wasConnecting = true
        }
        var established: LoopGuard.Connection?
        if result == 0 && loopGuard.isArmed, let local = Sockets.localAddress(fd) {
            established = LoopGuard.Connection(source: local, destination: targets[target])
        }
        guard wasConnecting || established != nil else { return false }
        if loopGuard.connected(fd: wasConnecting ? fd : nil, established: established) {
            stats.loopsRefused.bump()
            logLoop(destination: targets[target], nowMs: nowMs)
            return true
        }
        if let established { loopRecords[fd] = .outbound(established) }
        return false
    }

    /// `fd` is about to be closed.
    func forgetLoopRecord(_ fd: Int32) {
        guard !loopRecords.isEmpty, let record = loopRecords.removeValue(forKey: fd) else { return }
        switch record {
        case .connecting: _ = loopGuard.connected(fd: fd, established: nil)
        case .outbound(let connection): loopGuard.closed(connection, outbound: true)
        case .suspect(let connection): loopGuard.closed(connection, outbound: false)
        }
    }

    private func logLoop(destination: SocketAddress, nowMs: UInt64) {
        guard loopLog.allow(nowMs: nowMs) else { return }
        let note = "refusing a loop: this proxy's own connections to \(destination) arrive back at its listener "
            + "(a NAT rule, or an address of this host since start?)\(loopLog.suppressedNote)"
        logger.error("\(note)")
    }
}
