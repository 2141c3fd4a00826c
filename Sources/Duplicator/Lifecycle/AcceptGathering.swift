import Glibc
import Logging
import Platform
import Synchronization

/// `--accept-gathering auto`: below saturation every new client goes to one
/// worker; when a worker gets busy, the kernel's hash spreads them over all.
///
/// How: each worker has its own `SO_REUSEPORT` listener, all in one group
/// (`Proxy`), and the kernel picks the listener of each new client. A
/// classic BPF program attached to the group (`SO_ATTACH_REUSEPORT_CBPF`)
/// returns the index of the listener to use: `ret #0` puts every client on
/// the group's first listener (worker 0's: the workers' listeners join the
/// group in worker order, and a handover keeps that order); an index past the
/// group's end makes the kernel fall back to its hash, today's spreading. A
/// classic program cannot read a map, so the policy lives here and the
/// program is swapped when the mode changes (one `setsockopt`, at most once
/// per tick). Only the mode is steered, not which k of n workers take
/// clients: with one program of one instruction per mode there is no index
/// map to keep right across handovers and closes.
///
/// The measure: each worker, at its tick (every 100 ms), reads its thread's
/// CPU time; the fraction of the tick it ran is its busy fraction, which
/// `AcceptGatheringPolicy` turns into the mode. Spreading comes at the first
/// tick a worker is busy past the threshold, within 100 to 200 ms of load
/// rising.
///
/// What it cannot do: a client is placed when it connects and stays with its
/// worker. Long-lived connections opened while the proxy was idle stay
/// gathered on one worker when their load rises later; only the clients that
/// connect after the spread go to all. That is why `off`, the kernel's hash
/// from the start, is the default (docs/gathering.md).
///
/// Robust: where the kernel refuses the program (no `SO_ATTACH_REUSEPORT_CBPF`,
/// EPERM under a seccomp profile) the proxy says so in one line and runs as
/// without it. With a handover the new process's program replaces the old
/// one's at its start and again each second; the old one stops steering as
/// soon as it stops accepting.
final class AcceptGathering: Sendable {
    /// A copy of one of the group's listeners: the program belongs to the group.
    private let listenerFD: Int32
    private let stats: [WorkerStats]
    private let sessionsPerWorker: Int
    private let logger: Logger
    private let state: Mutex<State>
    /// `AcceptGatheringPolicy.Mode` for readers: 0 gathered, 1 spread, 2 given up (the kernel refused).
    private let publishedMode = Atomic<Int>(0)

    /// The program is set again this often while the mode holds: after a
    /// handover the old process may have set its own in the meantime.
    static let reassertMs: UInt64 = 1_000

    private struct State {
        var policy: AcceptGatheringPolicy
        var programSetMs: UInt64 = 0
        var failed = false
    }

    /// Each worker's thread CPU time and clock at its last tick, written by that worker alone.
    private final class WorkerSample: Sendable {
        let cpuNanos = Atomic<UInt64>(0)
        let wallNanos = Atomic<UInt64>(0)
    }
    private let samples: [WorkerSample]
    /// Taken by the worker that decides this tick; a worker that finds it
    /// taken only publishes its busy fraction, which the decider reads. So
    /// `state`'s lock is never contended: the workers' ticks come together,
    /// and ThreadSanitizer cannot see a contended lock's hand-over by the
    /// kernel (tsan.supp, MirrorHealth).
    private let deciding = Atomic<Bool>(false)

    /// Sets the gathering program on `listenerFD`'s group; nil (after one
    /// line in the log) where the kernel refuses it.
    init?(listenerFD: Int32, stats: [WorkerStats], sessionsPerWorker: Int,
          thresholds: AcceptGatheringPolicy.Thresholds, logger: Logger) {
        let copy = fcntl(listenerFD, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return nil }
        if let error = ReusePortProgram.set(.gathered, on: copy) {
            logger.notice("\(Self.refusal(error)); new clients go to the workers by the kernel's hash")
            _ = close(copy)
            return nil
        }
        self.listenerFD = copy
        self.stats = stats
        self.sessionsPerWorker = sessionsPerWorker
        self.logger = logger
        samples = stats.map { _ in WorkerSample() }
        state = Mutex(State(policy: AcceptGatheringPolicy(workers: stats.count, thresholds: thresholds),
                            programSetMs: MonotonicClock.coarseMs()))
    }

    deinit { _ = close(listenerFD) }

    /// With gathering off, the kernel's hash: a program a process before a
    /// handover set is taken off the group (nothing to do without one).
    static func clear(listenerFD: Int32) {
        _ = ReusePortProgram.clear(listenerFD)
    }

    /// The mode new clients are placed by now; nil once the kernel refused a program.
    var mode: AcceptGatheringPolicy.Mode? {
        switch publishedMode.load(ordering: .relaxed) {
        case 0: .gathered
        case 1: .spread
        default: nil
        }
    }

    /// A worker's tick: its busy fraction since its last tick goes to the
    /// policy, and the program changes if the mode does. Runs on the worker's
    /// thread (its CPU clock is the calling thread's); a stopping worker no
    /// longer steers (after a handover the group is the new process's).
    func workerTicked(_ worker: WorkerStats, nowMs: UInt64, stopping: Bool) {
        guard !stopping, let index = stats.firstIndex(where: { $0 === worker }) else { return }
        let cpuNanos = MonotonicClock.threadCPUNanos()
        let wallNanos = MonotonicClock.nowNanos()
        let sample = samples[index]
        let previousCPUNanos = sample.cpuNanos.load(ordering: .relaxed)
        let previousWallNanos = sample.wallNanos.load(ordering: .relaxed)
        sample.cpuNanos.store(cpuNanos, ordering: .relaxed)
        sample.wallNanos.store(wallNanos, ordering: .relaxed)
        guard previousWallNanos > 0, wallNanos > previousWallNanos else { return }
        let busy = Double(cpuNanos &- previousCPUNanos) / Double(wallNanos - previousWallNanos)
        worker.busyPermille.store(UInt64(max(0, min(busy, 1)) * 1000), ordering: .relaxed)
        guard deciding.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
        defer { deciding.store(false, ordering: .releasing) }
        state.withLock { state in
            guard !state.failed else { return }
            decide(&state, nowMs: nowMs, busyOf: { $0 == index ? busy : Double(stats[$0].busyPermille.value) / 1000 })
        }
    }

    /// Feeds every worker's latest busy fraction and table to the policy,
    /// and sets the program if the mode changed (or is due again).
    private func decide(_ state: inout State, nowMs: UInt64, busyOf: (Int) -> Double) {
        var changed: AcceptGatheringPolicy.Mode?
        for (index, worker) in stats.enumerated() {
            let tableHalfFull = Int(worker.sessionsActive.value) * 2 >= sessionsPerWorker
            if let mode = state.policy.observe(worker: index, busy: busyOf(index), tableHalfFull: tableHalfFull, nowMs: nowMs) {
                changed = mode
            }
        }
        guard changed != nil || nowMs &- state.programSetMs >= Self.reassertMs else { return }
        let mode = state.policy.mode
        state.programSetMs = nowMs
        if let error = ReusePortProgram.set(mode, on: listenerFD) {
            // Refused now, having been taken at start: the kernel's hash from here on.
            state.failed = true
            _ = ReusePortProgram.clear(listenerFD)
            publishedMode.store(2, ordering: .relaxed)
            logger.warning("\(Self.refusal(error)); new clients go to the workers by the kernel's hash from now on")
            return
        }
        publishedMode.store(mode == .gathered ? 0 : 1, ordering: .relaxed)
        if changed != nil {
            let note = mode == .gathered ? "new clients go to one worker" : "new clients spread over every worker"
            logger.debug("accept gathering: \(note) (busy per worker, thousandths: \(stats.map { $0.busyPermille.value }))")
        }
    }

    /// A worker's session table is half full: spread now, not at the next
    /// tick, so that a burst of clients does not fill one worker's table
    /// while the others have room. Called each round while it is half full:
    /// one atomic load once spread.
    func tableHalfFull(nowMs: UInt64, stopping: Bool) {
        guard !stopping, publishedMode.load(ordering: .relaxed) == 0 else { return }
        guard deciding.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
        defer { deciding.store(false, ordering: .releasing) }
        state.withLock { state in
            guard !state.failed, state.policy.mode == .gathered else { return }
            decide(&state, nowMs: nowMs, busyOf: { Double(stats[$0].busyPermille.value) / 1000 })
        }
    }

    private static func refusal(_ errorNumber: Int32) -> String {
        "--accept-gathering: the kernel refused the listeners' reuseport program (SO_ATTACH_REUSEPORT_CBPF: "
            + "\(SystemCallError.describe(errorNumber: errorNumber)))"
    }
}

/// The classic BPF programs of `AcceptGathering`, one instruction each.
enum ReusePortProgram {
    /// <asm-generic/socket.h>; Swift's Glibc module has neither.
    static let attachOption: Int32 = 51  // SO_ATTACH_REUSEPORT_CBPF, Linux 4.5
    static let detachOption: Int32 = 68  // SO_DETACH_REUSEPORT_BPF, Linux 5.8
    /// BPF_RET | BPF_K: return the constant.
    static let returnConstant: UInt16 = 0x06

    /// Gathered: `ret #0`, the group's first listener. Spread: `ret
    /// #0xffffffff`, past any group's end, so the kernel falls back to its
    /// hash (as with no program; detaching would need Linux 5.8). The errno
    /// when refused, else nil.
    static func set(_ mode: AcceptGatheringPolicy.Mode, on fd: Int32) -> Int32? {
        let index: UInt32 = mode == .gathered ? 0 : .max
        // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } and
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; },
        // laid out byte by byte as the C ABI of a 64-bit Linux has them.
        let instruction = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { instruction.deallocate() }
        instruction.initializeMemory(as: UInt8.self, repeating: 0, count: 8)
        instruction.storeBytes(of: returnConstant, toByteOffset: 0, as: UInt16.self)
        instruction.storeBytes(of: index, toByteOffset: 4, as: UInt32.self)
        let programBytes = MemoryLayout<UInt>.size * 2
        let program = UnsafeMutableRawPointer.allocate(byteCount: programBytes, alignment: 8)
        defer { program.deallocate() }
        program.initializeMemory(as: UInt8.self, repeating: 0, count: programBytes)
        program.storeBytes(of: UInt16(1), toByteOffset: 0, as: UInt16.self)
        program.storeBytes(of: UInt(bitPattern: instruction), toByteOffset: MemoryLayout<UInt>.size, as: UInt.self)
        guard setsockopt(fd, SOL_SOCKET, attachOption, program, socklen_t(programBytes)) == 0 else { return errno }
        return nil
    }

    /// Takes any program off the group (ENOENT when there was none).
    @discardableResult
    static func clear(_ fd: Int32) -> Int32? {
        var unused: Int32 = 0
        guard setsockopt(fd, SOL_SOCKET, detachOption, &unused, socklen_t(MemoryLayout<Int32>.size)) == 0 else { return errno }
        return nil
    }
}
