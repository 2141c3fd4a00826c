import Glibc
import Logging
import Platform
import Ring
import Synchronization

/// An error that stops the proxy from starting, worded for the person who
/// ran it: one line, what failed and what to do about it.
public struct ProxyError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// Explains a failure to set up io_uring or a worker's memory.
    static func setup(_ error: RingError, config: Config) -> ProxyError {
        setup(operation: error.operation, errorNumber: error.errno, description: error.description, config: config)
    }

    /// Explains a failure of a worker's other set-up calls (its memory, epoll).
    static func setup(_ error: SystemCallError, config: Config) -> ProxyError {
        setup(operation: error.operation, errorNumber: error.errorNumber, description: error.detailedDescription,
              config: config)
    }

    /// `description`: what failed and why, as the error says it.
    private static func setup(operation: String, errorNumber: Int32, description error: String,
                              config: Config) -> ProxyError {
        switch errorNumber {
        case ENOSYS:
            return ProxyError("io_uring is not available: this kernel has no io_uring (\(error)); Linux 6.1 or newer is needed")
        case EPERM where operation == "io_uring_setup":
            return ProxyError("io_uring is forbidden here (\(error)): check sysctl kernel.io_uring_disabled, "
                + "or the container's seccomp profile (Docker: --security-opt seccomp=<profile allowing io_uring_*>)")
        case ENOMEM:
            // The rings (64-byte SQEs, 16-byte CQEs) and the registered pool are locked memory.
            let limitText = LockedMemory.rlimitBytes().map { "\($0) bytes" } ?? "unlimited"
            return ProxyError("not enough locked memory (\(operation) failed): each worker needs up to "
                + "\(LockedMemory.perWorkerBytes(config)) bytes (its rings and a "
                + "\(config.poolSlotsPerWorker * config.slotSize)-byte buffer pool), RLIMIT_MEMLOCK is \(limitText); "
                + "raise it (ulimit -l, LimitMEMLOCK= in systemd) or lower --max-memory")
        default:
            return ProxyError("cannot start a worker: \(error)")
        }
    }
}

/// The running proxy: resolves the endpoints, binds one `SO_REUSEPORT`
/// listener per worker, starts the workers, and stops them.
public final class Proxy: Sendable {
    public let config: Config
    public let stats: [WorkerStats]
    /// Where clients connect (the real port when `-l` said port 0).
    public let listenAddress: SocketAddress
    private let targets: [SocketAddress]
    let loopGuard: LoopGuard
    /// One health state per mirror, shared by the workers.
    private let mirrorHealth: MirrorHealth
    /// Each worker's listeners (one each, unless a handover brought more).
    private let listenerFDs: Mutex<[[Int32]]>
    /// Listeners bound beside those a handover brought, which listen only
    /// once their worker can accept: a group member that listens earlier
    /// takes a share of the clients and holds them until then.
    private let listenLater: Set<Int32>
    /// Copies of every listener, for a handover to a new process
    /// (`--handover-socket`); closed on stop, so that a stopped proxy's port
    /// refuses clients instead of queueing them.
    private let handoverFDs: Mutex<[Int32]>
    let control: WorkerControl
    /// `--accept-gathering auto` with more than one listener, where the kernel took its program.
    private let gathering: AcceptGathering?
    private let threads = Mutex<[NativeThread]>([])
    private let logger: Logger
    /// `--dump-dir`: the thread that writes the pcapng dumps; nil without.
    public let dumpWriter: DumpWriter?
    /// `--record-dir`: the thread that writes the recorded sessions; nil without.
    public let recordWriter: RecordWriter?
    /// SIGHUP's configuration generations and mirror slots (`ConfigReload.swift`).
    let reloads: ConfigReloads

    /// Validates, resolves, refuses the operator mistakes of `StartupChecks`,
    /// and binds; nothing runs yet. `metrics` is only checked against the
    /// listen address here (the metrics server binds it). `inheritedListeners`:
    /// the listeners a handover brought from the process before (`Handover`),
    /// now this proxy's: used as they are, not bound again.
    public init(config: Config, metrics: Endpoint? = nil, logger: Logger = Logger(label: "duplicator"),
                inheritedListeners: [Int32] = []) throws {
        var inherited = inheritedListeners
        defer { inherited.forEach { _ = close($0) } }
        do {
            try config.validate()
        } catch {
            throw ProxyError(error.message)
        }
        self.config = config
        self.logger = logger
        mirrorHealth = MirrorHealth(config.slotLimits)
        let listenAddress: SocketAddress
        do {
            listenAddress = try config.listen.resolve(role: .listen)
            let main = StartupChecks.Resolved(endpoint: config.main, addresses: try config.main.resolveAll(role: .connect))
            let mirrors = try config.mirrors.map {
                StartupChecks.Resolved(endpoint: $0, addresses: try $0.resolveAll(role: .connect))
            }
            let metrics = try metrics.map { StartupChecks.Resolved(endpoint: $0, addresses: [try $0.resolve(role: .listen)]) }
            let localAddresses = localHostAddresses()
            try StartupChecks(listen: config.listen, listenAddress: listenAddress, main: main, mirrors: mirrors,
                              metrics: metrics, localAddresses: localAddresses).check()
            targets = ConfigReloads.workerTargets(main: main.addresses[0], mirrors: mirrors.map { $0.addresses[0] },
                                                  slots: config.mirrorSlotCount)
            reloads = ConfigReloads(config: config, listenAddress: listenAddress, mirrors: mirrors.map { $0.addresses[0] },
                                    metrics: metrics, generations: ConfigGenerations())
            control = WorkerControl(generations: reloads.generations)
            control.problems.name(main: config.main.text, mainConnectTimeoutMs: config.mainConnectTimeoutMs,
                                  dumpDirectory: config.dumpDirectory, dumpQueueBytes: config.dumpQueueBytes)
            loopGuard = LoopGuard(targets: targets, localAddresses: localAddresses)
            // Sized for every mirror slot: a reload may fill a free one.
            if let directory = config.dumpDirectory, config.compare, config.mirrorSlotCount > 0 {
                dumpWriter = try DumpWriter(directory: directory, maxFiles: config.dumpMaxFiles,
                                            servers: targets.map(\.serverAddress), mirrorNames: reloads.current.slotNames,
                                            queueBytesMax: config.dumpQueueBytes, problems: control.problems)
            } else {
                dumpWriter = nil
            }
            if let recording = config.recording {
                recordWriter = try RecordWriter(config: recording, main: targets[0].serverAddress, problems: control.problems)
            } else {
                recordWriter = nil
            }
        } catch let error as ConfigError {
            throw ProxyError(error.message)
        }
        var fds: [Int32] = []
        var later: Set<Int32> = []
        var bound = listenAddress
        do {
            // Every worker binds its own SO_REUSEPORT listener, which would
            // also let another instance (or any same-user SO_REUSEPORT socket)
            // bind the port without error and silently take a share of the
            // clients. So first a bind without SO_REUSEPORT: it fails if
            // anyone listens there, and a later instance fails it against
            // our listeners. Not covered: a foreign same-user SO_REUSEPORT
            // listener started after us still joins our group, and two
            // instances started in the same instant can both pass the probe.
            // Port 0 needs no probe: the kernel picks a free port.
            if !inherited.isEmpty {
                // Our own listeners, handed over: the probe would refuse them.
                // Each keeps its accept queue; more workers than listeners
                // bind more that join the SO_REUSEPORT group, fewer share them.
                fds = inherited
                inherited = []
                bound = Sockets.localAddress(fds[0]) ?? listenAddress
                // listen(2) again sets this process's queue length; the queue keeps its clients.
                for fd in fds { _ = Glibc.listen(fd, Int32(config.listenQueueLength)) }
            } else if listenAddress.port != 0 {
                try Sockets.probeUnshared(listenAddress)
            }
            while fds.count < config.threads {
                if !inheritedListeners.isEmpty {
                    let fd = try Sockets.boundNotListening(to: bound)
                    fds.append(fd)
                    later.insert(fd)
                    continue
                }
                let fd = try Sockets.listen(on: bound, queueLength: Int32(config.listenQueueLength), reusePort: true)
                fds.append(fd)
                // With port 0 the first listener picks a port; the others share it.
                if let local = Sockets.localAddress(fd) { bound = local }
            }
        } catch {
            fds.forEach { _ = close($0) }
            let hint = error.errorNumber == EADDRINUSE ? ": another socket listens on that port (another duplicator?)" : ""
            throw ProxyError("cannot listen on \(config.listen.text): \(SystemCallError.describe(errorNumber: error.errorNumber))\(hint)")
        }
        self.listenAddress = bound
        listenLater = later
        let threadCount = config.threads
        listenerFDs = Mutex((0..<threadCount).map { worker in
            stride(from: worker, to: fds.count, by: threadCount).map { fds[$0] }
        })
        handoverFDs = Mutex(fds.map { fcntl($0, F_DUPFD_CLOEXEC, 0) }.filter { $0 >= 0 })
        let stats = (0..<config.threads).map { _ in WorkerStats(mirrorCount: config.mirrorSlotCount) }
        self.stats = stats
        // One listener has no one to gather with. Listeners bound to listen
        // later (a handover's) are not in the group yet: the program's index
        // 0 is the first listening one's.
        if config.acceptGathering == .auto && config.threads > 1 && fds.count > 1 {
            gathering = AcceptGathering(listenerFD: fds[0], stats: stats, sessionsPerWorker: config.sessionsPerWorker,
                                        thresholds: config.acceptGatheringThresholds, logger: logger)
        } else {
            gathering = nil
        }
        // Without a program of ours, none of the process before a handover either.
        if gathering == nil && !inheritedListeners.isEmpty { AcceptGathering.clear(listenerFD: fds[0]) }
    }

    deinit {
        listenerFDs.withLock { $0.joined().forEach { _ = close($0) } }
        closeHandoverListeners()
    }

    /// Runs `body` with a copy of each listener, while the proxy runs: what a
    /// handover sends. Nil (and `body` not run) once it is stopping.
    public func withListenersForHandover<Result>(_ body: ([Int32]) throws -> Result) rethrows -> Result? {
        try handoverFDs.withLock { fds in fds.isEmpty ? nil : try body(fds) }
    }

    private func closeHandoverListeners() {
        handoverFDs.withLock { fds in
            fds.forEach { _ = close($0) }
            fds = []
        }
    }

    /// Starts the workers and returns once each has its ring and buffers, or
    /// throws the first setup failure (and stops the others).
    public func start() throws {
        let fds = listenerFDs.withLock { fds -> [[Int32]] in
            defer { fds = [] }
            return fds
        }
        precondition(!fds.isEmpty, "start() called twice")
        let backend: Config.Backend
        switch (config.backend, Self.ioUringProblem(config)) {
        case (.epoll, _):
            backend = .epoll
        case (.ioUring, let problem?):
            fds.joined().forEach { _ = close($0) }
            throw problem
        case (.auto, let problem?):
            backend = .epoll
            logger.warning("running on epoll (--backend auto): \(problem.message)")
            control.backend.withLock { $0 = (.epoll, problem.message) }
        case (.auto, nil), (.ioUring, nil):
            backend = .ioUring
        }
        control.backend.withLock { $0 = ($0?.kind == backend ? $0 : (backend, nil)) }
        try dumpWriter?.start()
        try recordWriter?.start()
        for (index, listeners) in fds.enumerated() {
            let environment = WorkerEnvironment(config: config, targets: targets, loopGuard: loopGuard, mirrorHealth: mirrorHealth,
                                                listenerFDs: listeners, stats: stats[index], allStats: stats, control: control,
                                                logger: logger, dumpSink: dumpWriter, recordSink: recordWriter,
                                                acceptGathering: gathering)
            let job = WorkerJob(backend: backend, environment: environment, listenLater: listeners.filter(listenLater.contains),
                                reportsSetup: index == 0)
            let thread = try startThread("worker \(index)") { job.run() }
            threads.withLock { $0.append(thread) }
        }
        while control.ready.load(ordering: .acquiring) + control.exited.load(ordering: .acquiring) < fds.count {
            usleep(1000)
        }
        let errors = control.startErrors.withLock { $0 }
        if let first = errors.first {
            stop(immediately: true)
            wait()
            throw ProxyError(first)
        }
    }

    /// Why io_uring cannot run this configuration here, worded as `--backend
    /// io_uring` refuses it; nil when it can (or is not asked about). io_uring
    /// being forbidden is what a user should hear first, then the locked
    /// memory of the pools.
    static func ioUringProblem(_ config: Config) -> ProxyError? {
        guard config.backend != .epoll else { return nil }
        // The probe ring lives and dies on a thread of its own: its teardown
        // can leave task work for the thread that made it, which interrupts
        // that thread's next blocking call (EINTR, not restarted for a socket
        // with a timeout), and the caller's thread goes on to serve.
        let problem = Mutex<ProxyError?>(nil)
        do {
            let probe = try NativeThread.start(name: "io_uring probe") {
                do {
                    _ = try Ring(entries: 2, completionEntries: 4)
                } catch let error as RingError {
                    problem.withLock { $0 = ProxyError.setup(error, config: config) }
                } catch {
                    problem.withLock { $0 = ProxyError("cannot set up io_uring: \(error)") }
                }
            }
            probe.join()
        } catch {
            return ProxyError("cannot start a thread: \(SystemCallError.describe(errorNumber: error.errorNumber))")
        }
        return problem.withLock { $0 } ?? LockedMemory.check(config, limitBytes: LockedMemory.limitBytes())
    }

    /// The backend the workers run on (nil before `start`), and why epoll
    /// when `--backend auto` fell back to it.
    public var backend: (kind: Config.Backend, fallbackReason: String?)? {
        control.backend.withLock { $0 }
    }

    /// Graceful: stop accepting, let live sessions finish for
    /// `drainTimeoutMs`, then close the rest. Immediate: close all now.
    public func stop(immediately: Bool = false) {
        let mode = immediately ? StopMode.immediate : .graceful
        closeHandoverListeners()
        control.stopMode.store(mode.rawValue, ordering: .relaxed)
    }

    /// Blocks until every worker has exited.
    public func wait() {
        let all = threads.withLock { threads -> [NativeThread] in
            defer { threads = [] }
            return threads
        }
        for thread in all { thread.join() }
        // The workers are gone: the dumps they handed over are written, then the writer ends.
        if !all.isEmpty {
            dumpWriter?.stop()
            recordWriter?.stop()
        }
    }

    /// How the first worker's ring was set up (the best mode the kernel took; `epoll` on epoll).
    public var ringSetupMode: String {
        control.setupMode.withLock { $0 }
    }

    /// What `--zerocopy` came to on this kernel (`IOUringWorker.zeroCopyNote`).
    public var zeroCopyNote: String {
        control.zeroCopyNote.withLock { $0 }
    }

    /// Every worker has exited (after a stop, or a worker's fatal error).
    public var hasExited: Bool {
        control.exited.load(ordering: .acquiring) >= config.threads
    }

    /// How new clients are placed (`--accept-gathering`): nil when the
    /// kernel's hash places them (off, one worker, or the kernel refused the program).
    public var acceptGatheringMode: AcceptGatheringPolicy.Mode? { gathering?.mode }

    /// Sessions live now, over all workers.
    public var activeSessions: Int {
        stats.reduce(0) { $0 + Int($1.sessionsActive.value) }
    }
}

/// What a worker thread needs, handed over as one Sendable value.
private struct WorkerJob: Sendable {
    let backend: Config.Backend
    let environment: WorkerEnvironment
    /// Of the worker's listeners, those to listen on once it is set up (`Proxy.listenLater`).
    let listenLater: [Int32]
    /// Whether this worker says what its ring's setup came to (`Proxy.setupMode`,
    /// `zeroCopyNote`): every worker's is the same, and one writer keeps the
    /// workers from contending for the lock as they start. (ThreadSanitizer
    /// cannot see the kernel's hand-over of a contended `Mutex`, a priority-
    /// inheriting futex, and reported the writes as a race.)
    let reportsSetup: Bool

    func run() {
        let (config, listenerFDs, control, logger) = (environment.config, environment.listenerFDs, environment.control,
                                                      environment.logger)
        defer { control.exited.add(1, ordering: .releasing) }
        let loop: () throws -> Void
        do {
            if backend == .epoll {
                let worker = try EpollWorker(environment)
                if reportsSetup {
                    control.setupMode.withLock { $0 = "epoll" }
                    control.zeroCopyNote.withLock { $0 = "no zero-copy sends (the epoll backend has none)" }
                }
                loop = worker.run
            } else {
                let worker = try IOUringWorker(environment)
                if reportsSetup {
                    control.setupMode.withLock { $0 = worker.ring.setupMode.rawValue }
                    control.zeroCopyNote.withLock { $0 = worker.zeroCopyNote }
                }
                loop = worker.run
            }
        } catch let error as RingError {
            listenerFDs.forEach { _ = close($0) }
            control.startErrors.withLock { $0.append(ProxyError.setup(error, config: config).message) }
            return
        } catch let error as SystemCallError {
            listenerFDs.forEach { _ = close($0) }
            control.startErrors.withLock { $0.append(ProxyError.setup(error, config: config).message) }
            return
        } catch let error as ProxyError {
            listenerFDs.forEach { _ = close($0) }
            control.startErrors.withLock { $0.append(error.message) }
            return
        } catch {
            listenerFDs.forEach { _ = close($0) }
            control.startErrors.withLock { $0.append("cannot start a worker: \(error)") }
            return
        }
        for fd in listenLater { _ = listen(fd, Int32(config.listenQueueLength)) }
        control.ready.add(1, ordering: .releasing)
        do {
            try loop()
        } catch {
            logger.critical("worker stopped: \(error)")
        }
    }
}

/// Runs `body` on a new POSIX thread (the worker's ring must be created and
/// used on one thread, which Swift's task executors do not promise), with
/// every signal blocked: they are the main thread's to take.
func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) throws(ProxyError) -> NativeThread {
    do {
        return try NativeThread.start(name: name, body)
    } catch {
        throw ProxyError("cannot start a thread: \(SystemCallError.describe(errorNumber: error.errorNumber))")
    }
}
