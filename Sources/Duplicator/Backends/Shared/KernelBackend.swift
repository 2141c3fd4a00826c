import Platform
import Synchronization

/// A backend over the kernel's sockets, io_uring's (`IOUringWorker`) or epoll's
/// (`EpollWorker`), as opposed to the tests' fake: the operations and
/// loop steps both do alike.
protocol KernelBackend: WorkerBackend {
    var sockets: WorkerSockets { get }
    var parts: WorkerParts { get }
    var core: WorkerCore<Self> { get }
    var control: WorkerControl { get }
}

extension KernelBackend {
    var context: SessionContext { parts.context }

    /// A round starts: the clocks the sessions read.
    func startRound() {
        if let generation = parts.follower.changed(control.generations) { adopt(generation) }
        context.nowMs = MonotonicClock.coarseMs()
        if parts.readsMicroseconds { context.nowUs = MonotonicClock.nowMicros() }
    }

    /// A round's completions are delivered: the sessions' timers that are
    /// due, the sessions waiting for buffers, the tick. True once the
    /// worker has finished (stopped, every session ended).
    func finishRound() -> Bool {
        // The mirrors' timers fire against the clock after this round's work.
        if !parts.timers.isEmpty { context.nowUs = MonotonicClock.nowMicros() }
        core.afterCompletions(io: self)
        if let gathering = parts.acceptGathering, parts.table.activeCount &* 2 >= parts.table.capacity {
            // A burst of clients fills the gathered worker's table faster than a tick.
            gathering.tableHalfFull(nowMs: context.nowMs, stopping: core.stopping)
        }
        if context.nowMs >= core.nextTickMs {
            core.tick(stopMode: StopMode(rawValue: control.stopMode.load(ordering: .relaxed)) ?? .running, io: self)
            parts.acceptGathering?.workerTicked(context.stats, nowMs: context.nowMs, stopping: core.stopping)
        }
        return core.isFinished
    }

    /// A reload published `generation`: sessions that start from now on
    /// follow it (live ones keep theirs).
    func adopt(_ generation: ConfigGeneration) {
        context.adopt(generation.limits)
        sockets.adopt(generation)
        core.adopt(generation)
        parts.timers.lowerBatchSlack(toUs: generation.config.mirrorBatchWakeSlackUs)
        parts.follower.adopted(generation, readsMicroseconds: WorkerParts.readsMicroseconds(generation.config,
                                                                                           dumping: context.dumpSink != nil
                                                                                               || context.recordSink != nil))
    }

    func admit(fd: Int32, session: Session) { Sockets.setNoDelay(fd) }

    var loopCheckNeeded: Bool { sockets.loopCheckNeeded }

    func isLoop(acceptedFD fd: Int32) -> Bool {
        sockets.isLoop(acceptedFD: fd, nowMs: context.nowMs)
    }

    func connectLooped(fd: Int32, leg: Leg, result: Int32) -> Bool {
        sockets.connectLooped(fd: fd, leg: leg, result: result, nowMs: context.nowMs)
    }

    func addresses(fd: Int32) -> ProxyAddresses? { Sockets.connectionAddresses(fd) }

    func wake(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer) {
        parts.timers.add(session: index, atUs: deadlineUs, for: timer)
    }

    func discardInBatches(fd: Int32) { sockets.discardInBatches(fd: fd) }

    func unsentBytes(fd: Int32) -> Int { sockets.unsentBytes(fd: fd) }

    func waitForBuffers(session index: UInt32) { parts.waiters.add(index) }
}
