import Glibc
import Logging
import Platform
import Synchronization

/// `--handover-socket PATH`: a binary upgrade or restart that refuses no
/// connection, as haproxy's `-x`. The process that holds PATH (the old one)
/// hands its listening sockets, every worker's and the metrics one, to a new
/// process over the Unix socket at PATH (SCM_RIGHTS, `HandoverMessage`).
///
/// Why no connection is lost: a listening socket is one kernel object with
/// one accept queue, whatever process holds a descriptor of it. The new
/// process accepts on the very sockets it received (never closes one, since
/// the last close of a SO_REUSEPORT member resets the clients in its queue),
/// and only once it does (`taken`) does the old one stop accepting: for a
/// moment both accept from the same queues, each client going to exactly one
/// of them. What the old one's accept took before its cancel landed it
/// serves while it drains (`WorkerCore`), up to `--drain-timeout`, then it
/// exits 0. Its own descriptors of the listeners close; the sockets live on
/// in the new process.
///
/// The socket file is mode 0600, and each side refuses a peer of another
/// user (SO_PEERCRED): the listeners are the production port.
public enum Handover {
    /// The longest the peer may take to answer a step (the request, the offer,
    /// the stop); the new process's start between offer and `taken` may take longer.
    static let stepTimeoutMs = 5_000
    static let startTimeoutMs = 60_000
    /// sun_path holds 108 bytes with its terminating zero; the temporary
    /// name we bind first adds a suffix.
    static let pathBytesMax = 90

    /// The path, refused in one line when it cannot be a socket's.
    public static func validate(path: String) throws(HandoverError) {
        guard !path.isEmpty else { throw HandoverError("--handover-socket: an empty path") }
        guard path.utf8.count <= pathBytesMax else {
            throw HandoverError("--handover-socket \(path): longer than \(pathBytesMax) bytes (a Unix socket's path is short)")
        }
    }

    /// A connected or listening Unix stream socket, close-on-exec.
    static func unixSocket() throws(HandoverError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HandoverError("socket(AF_UNIX): \(errorDescription(errno))") }
        return fd
    }

    static func withAddress<Result>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.prefix(raw.count - 1).enumerated() { raw[index] = byte }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// The peer is this user, or the reason it is not.
    static func checkPeer(_ fd: Int32) throws(HandoverError) -> Int32 {
        guard let peer = DescriptorPassing.peer(fd) else {
            throw HandoverError("cannot tell who the peer is (SO_PEERCRED): \(errorDescription(errno))")
        }
        guard peer.uid == geteuid() else {
            throw HandoverError("the peer (pid \(peer.pid)) runs as uid \(peer.uid), not as this process's uid \(geteuid())")
        }
        return peer.pid
    }

    /// One line (and the descriptors that came with it) within `timeoutMs`.
    static func readMessage(_ fd: Int32, timeoutMs: Int) throws(HandoverError) -> (message: HandoverMessage, fds: [Int32]) {
        var line: [UInt8] = []
        var fds: [Int32] = []
        let deadline = MonotonicClock.nowMs() + UInt64(timeoutMs)
        do throws(HandoverError) {
            while line.last != UInt8(ascii: "\n") {
                guard line.count < HandoverMessage.bytesMax else { break }
                let now = MonotonicClock.nowMs()
                guard now < deadline else { throw HandoverError("no answer within \(timeoutMs) ms") }
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&entry, 1, Int32(deadline - now))
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0 else { continue }
                let part: (bytes: [UInt8], fds: [Int32], truncated: Bool)
                do {
                    part = try DescriptorPassing.receive(fd, capacity: HandoverMessage.bytesMax - line.count)
                } catch {
                    throw HandoverError("cannot read from the peer: \(error)")
                }
                fds += part.fds
                if part.truncated { throw HandoverError("the peer sent more descriptors than a handover holds") }
                guard !part.bytes.isEmpty else { throw HandoverError("the peer closed the connection") }
                line += part.bytes
            }
            return (try HandoverMessage.parse(line), fds)
        } catch {
            fds.forEach { _ = close($0) }
            throw error
        }
    }

    static func send(_ fd: Int32, _ message: HandoverMessage, fds: [Int32] = []) throws(HandoverError) {
        do {
            try DescriptorPassing.send(fd, bytes: message.bytes, fds: fds)
        } catch {
            throw HandoverError("cannot write to the peer: \(error)")
        }
    }

    /// Takes the listeners from the process that holds `path`, if one does;
    /// nil when there is none or the handover failed, having logged one line
    /// that says why (the caller then binds as usual). `listen` and `metrics`
    /// are this process's addresses: listeners elsewhere are refused.
    public static func takeOver(path: String, listen: SocketAddress, metrics: SocketAddress?,
                                logger: Logger) -> HandoverTakeover? {
        let fd: Int32
        do { fd = try unixSocket() } catch {
            logger.warning("handover: \(error.message); binding normally")
            return nil
        }
        // A holder busy with another handover leaves its backlog full, and a
        // connect to a Unix socket then waits: for a step's time at most.
        var timeout = timeval(tv_sec: stepTimeoutMs / 1000, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard withAddress(path, { Glibc.connect(fd, $0, $1) }) == 0 else {
            let error = errno
            close(fd)
            switch error {
            case ENOENT:
                logger.info("handover: no process holds \(path) (no such file): binding normally")
            case ECONNREFUSED:
                logger.warning("handover: \(path) is stale (no process listens on it): binding normally")
            default:
                logger.warning("handover: cannot connect to \(path): \(errorDescription(error)); binding normally")
            }
            return nil
        }
        var received: [Int32] = []
        do throws(HandoverError) {
            let peerPID = try checkPeer(fd)
            try send(fd, .request(pid: getpid()))
            let (message, fds) = try readMessage(fd, timeoutMs: stepTimeoutMs)
            received = fds
            switch message {
            case .refused(let reason):
                throw HandoverError("pid \(peerPID) refused: \(reason)")
            case .offer(let listenerCount, let hasMetrics, _):
                guard fds.count == listenerCount + (hasMetrics ? 1 : 0) else {
                    throw HandoverError("the offer announced \(listenerCount + (hasMetrics ? 1 : 0)) descriptors and \(fds.count) came")
                }
                let listeners = Array(fds[..<listenerCount])
                try HandoverListener.check(listeners.map(HandoverListener.facts), expected: listen, what: "-l")
                var metricsListener: Int32?
                if hasMetrics {
                    let metricsFD = fds[listenerCount]
                    let facts = HandoverListener.facts(metricsFD)
                    if let metrics, (try? HandoverListener.check([facts], expected: metrics, what: "--metrics")) != nil {
                        metricsListener = metricsFD
                    } else {
                        // Not ours to serve: the old process's metrics port closes with it.
                        close(metricsFD)
                        let note = metrics == nil ? "this process has no --metrics"
                            : "it is on \(facts.address.map { "\($0)" } ?? "?"), not on --metrics \(metrics!)"
                        logger.warning("handover: the metrics listener handed over is not used (\(note)); binding --metrics normally")
                    }
                }
                return HandoverTakeover(connection: fd, peerPID: peerPID, listeners: listeners, metricsListener: metricsListener)
            default:
                throw HandoverError("expected an offer, got '\(message.text.dropLast())'")
            }
        } catch {
            received.forEach { _ = close($0) }
            close(fd)
            logger.warning("handover from \(path) failed: \(error.message); binding normally")
            return nil
        }
    }
}

/// The listeners received from the process before, and the connection to
/// it: `confirm` once this process accepts on them, which tells the old one
/// to stop accepting. Closing the connection unconfirmed (`abandon`) leaves
/// the old process serving.
public final class HandoverTakeover: Sendable {
    private let connection: Int32
    public let peerPID: Int32
    /// Each worker listener's descriptor, now this process's (the `Proxy` takes them).
    public let listeners: [Int32]
    /// The metrics listener's, when it matched `--metrics` (the `MetricsServer` takes it).
    public let metricsListener: Int32?
    private let closed = Atomic<Bool>(false)

    init(connection: Int32, peerPID: Int32, listeners: [Int32], metricsListener: Int32?) {
        self.connection = connection
        self.peerPID = peerPID
        self.listeners = listeners
        self.metricsListener = metricsListener
    }

    deinit { abandon() }

    /// Tells the old process that this one accepts on the listeners now, and
    /// waits for it to say it stopped accepting; the error says what failed
    /// (both processes then accept on the same sockets until the old one is told
    /// otherwise, which loses no client).
    public func confirm() throws(HandoverError) {
        defer { abandon() }
        try Handover.send(connection, .taken)
        let (message, fds) = try Handover.readMessage(connection, timeoutMs: Handover.stepTimeoutMs)
        fds.forEach { _ = close($0) }
        guard message == .stopped else { throw HandoverError("expected 'stopped', got '\(message.text.dropLast())'") }
    }

    /// Closes the connection (once); the old process goes on serving unless confirmed.
    public func abandon() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        close(connection)
    }
}

/// The old process's side: listens at PATH (mode 0600) and hands its
/// listeners to the first process of this user that asks and confirms.
/// Bound at start under a temporary name, so that a bad path is an error
/// before anything is taken over, and renamed to PATH by `serve` once this
/// process accepts (the previous holder's file is replaced, atomically).
public final class HandoverServer: Sendable {
    public let path: String
    private let temporaryPath: String
    private let listener: Int32
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(true)
    /// The inode of the file this process put at PATH, so that it removes
    /// only its own on exit (a successor's has replaced it after a handover).
    private let inode = Atomic<UInt64>(0)
    private let handedOver = Atomic<Bool>(false)

    public init(path: String) throws(HandoverError) {
        try Handover.validate(path: path)
        self.path = path
        temporaryPath = path + ".\(getpid()).new"
        listener = try Handover.unixSocket()
        unlink(temporaryPath)
        guard Handover.withAddress(temporaryPath, { bind(listener, $0, $1) }) == 0 else {
            let error = errno
            close(listener)
            throw HandoverError("--handover-socket \(path): cannot bind \(temporaryPath): \(errorDescription(error))")
        }
        guard chmod(temporaryPath, 0o600) == 0, Glibc.listen(listener, 4) == 0 else {
            let error = errno
            unlink(temporaryPath)
            close(listener)
            throw HandoverError("--handover-socket \(path): cannot listen on \(temporaryPath): \(errorDescription(error))")
        }
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        if !finished.load(ordering: .acquiring) { stop() }
        close(listener)
        unlink(temporaryPath)
    }

    /// Puts the socket at PATH and answers handovers on a thread of its own.
    /// `offer` gives fresh descriptors of the listeners (the server closes
    /// them once sent), nil while stopping; `handOver` runs once a new
    /// process confirmed, with its pid: stop accepting and drain.
    public func serve(offer: @escaping @Sendable () -> (listeners: [Int32], metrics: Int32?)?,
                      handOver: @escaping @Sendable (Int32) -> Void, logger: Logger) throws(HandoverError) {
        guard rename(temporaryPath, path) == 0 else {
            throw HandoverError("--handover-socket \(path): cannot put the socket there: \(errorDescription(errno))")
        }
        var status = stat()
        if stat(path, &status) == 0 { inode.store(UInt64(status.st_ino), ordering: .relaxed) }
        finished.store(false, ordering: .releasing)
        do {
            try startThread("handover") { [self] in
                defer { finished.store(true, ordering: .releasing) }
                run(offer: offer, handOver: handOver, logger: logger)
            }.detach()
        } catch {
            finished.store(true, ordering: .releasing)
            throw HandoverError("--handover-socket: \(error.message)")
        }
    }

    /// Stops answering; removes PATH unless a successor holds it now.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .acquiring) { usleep(1000) }
        var status = stat()
        if !handedOver.load(ordering: .acquiring), inode.load(ordering: .relaxed) != 0,
           stat(path, &status) == 0, UInt64(status.st_ino) == inode.load(ordering: .relaxed) {
            unlink(path)
        }
    }

    private func run(offer: @Sendable () -> (listeners: [Int32], metrics: Int32?)?,
                     handOver: @Sendable (Int32) -> Void, logger: Logger) {
        while !stopping.load(ordering: .relaxed) {
            var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 100) > 0 else { continue }
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            _ = fcntl(connection, F_SETFL, fcntl(connection, F_GETFL) & ~O_NONBLOCK)
            defer { close(connection) }
            do {
                if let pid = try answer(connection, offer: offer) {
                    handedOver.store(true, ordering: .releasing)
                    handOver(pid)
                    // Best effort: the new process serves whatever we say now.
                    try? Handover.send(connection, .stopped)
                    return
                }
            } catch {
                logger.warning("handover refused or failed: \(error.message); still serving")
            }
        }
    }

    /// One handover conversation: the new process's pid once it confirmed,
    /// nil if it went away without confirming (nothing changes then).
    private func answer(_ connection: Int32, offer: () -> (listeners: [Int32], metrics: Int32?)?) throws(HandoverError) -> Int32? {
        let peerPID: Int32
        do {
            peerPID = try Handover.checkPeer(connection)
        } catch {
            try? Handover.send(connection, .refused(error.message))
            throw error
        }
        let (request, stray) = try Handover.readMessage(connection, timeoutMs: Handover.stepTimeoutMs)
        stray.forEach { _ = close($0) }
        guard case .request = request else {
            try? Handover.send(connection, .refused("expected a request"))
            throw HandoverError("pid \(peerPID) sent '\(request.text.dropLast())' where a request was expected")
        }
        guard let (listeners, metrics) = offer() else {
            try? Handover.send(connection, .refused("this process is stopping"))
            throw HandoverError("pid \(peerPID) asked while this process is stopping")
        }
        let fds = listeners + (metrics.map { [$0] } ?? [])
        defer { fds.forEach { _ = close($0) } }
        try Handover.send(connection, .offer(listeners: listeners.count, metrics: metrics != nil, pid: getpid()), fds: fds)
        let reply: HandoverMessage
        do {
            (reply, _) = try Handover.readMessage(connection, timeoutMs: Handover.startTimeoutMs)
        } catch {
            throw HandoverError("pid \(peerPID) did not take the listeners (\(error.message))")
        }
        guard reply == .taken else { throw HandoverError("pid \(peerPID) answered '\(reply.text.dropLast())' where 'taken' was expected") }
        return peerPID
    }
}
