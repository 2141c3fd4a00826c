import Glibc
import Platform

/// Handshake steps off the worker's thread (promise 11), at a lower CPU
/// priority than the worker.
///
/// A server's first flight is a key exchange and a signature: about 250 us
/// of one core, where a request costs the worker about 15. Ordering the
/// steps within the worker's loop (`HandshakeBudget`) keeps an established
/// session's bytes ahead of the handshakes that wait, but each step still
/// holds the thread that carries every session's bytes, so a flood of new
/// clients took most of an established client's rate. Here each worker
/// hands its handshakes' steps to a thread of its own, niced
/// (`niceIncrement`): the kernel's scheduler then runs the worker first
/// whenever both want the CPU, and the handshakes take what is left, never
/// nothing (a niced thread still gets its weight's share, so new clients
/// are slowed, not starved). It does so while a session that has run for a
/// while is open (`TLSSessionIO.protectsSessions`): otherwise the hand-off's
/// two wakeups protect nothing, and the worker steps the handshakes itself.
///
/// A step's stream belongs to this thread from `submit` until its result
/// is taken (`takeResults`): the worker neither feeds it nor takes its
/// ciphertext meanwhile (`TLSLeg.stepping`). A result wakes the worker
/// through a datagram on a socket pair, which the worker receives like any
/// other socket (`wakeFD`), on either backend.
final class HandshakeThread: @unchecked Sendable {
    /// A step to run: the leg's place and generation say, when it comes
    /// back, whether the leg is still the one that asked.
    struct Step: @unchecked Sendable {
        let place: Int
        let generation: UInt16
        /// Owned by the thread until the result is taken.
        let stream: TLSStream
    }

    struct Result: Sendable {
        let place: Int
        let generation: UInt16
        let state: TLSStream.HandshakeState
    }

    /// nice(1)'s increment for the thread: at 10 it weighs about a tenth
    /// of the worker when both are runnable on one core.
    static let niceIncrement: Int32 = 10

    private let lock = ConditionLock()
    private var steps: [Step] = []
    private var stepsHead = 0
    private var results: [Result] = []
    /// A wake datagram was sent and its results are not taken yet.
    private var wakeSent = false
    private var stopping = false
    private var thread: NativeThread?
    /// The worker's end of the socket pair: receive on it to be woken.
    let wakeFD: Int32
    private let signalFD: Int32

    /// Throws when the socket pair or the thread cannot be had: the worker
    /// then steps its handshakes itself.
    init(name: String) throws(ProxyError) {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                         0, &pair) == 0 else {
            throw ProxyError("cannot open the TLS handshake thread's socket pair: \(SystemCallError.describe(errorNumber: errno))")
        }
        wakeFD = pair[0]
        signalFD = pair[1]
        do {
            thread = try startThread(name) { [self] in run() }
        } catch {
            close(wakeFD)
            close(signalFD)
            throw error
        }
    }

    /// The thread holds this object until `stop`.
    deinit {
        close(wakeFD)
        close(signalFD)
    }

    /// Ends the thread once its current step is done; steps not begun are dropped.
    func stop() {
        lock.withLock {
            stopping = true
            lock.signal()
        }
        thread?.join()
        thread = nil
    }

    /// On the worker's thread: the step runs as soon as the thread gets to it.
    func submit(_ step: Step) {
        lock.withLock {
            steps.append(step)
            lock.signal()
        }
    }

    /// On the worker's thread: the steps done since the last call, in the order they were done.
    func takeResults(into done: inout [Result]) {
        lock.withLock {
            swap(&done, &results)
            wakeSent = false
        }
    }

    private func run() {
        // This thread only: on Linux a nice value is a thread's, and 0 is the caller.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Self.niceIncrement)
        lock.lock()
        while true {
            while stepsHead == steps.count && !stopping { lock.wait() }
            if stopping { break }
            let step = steps[stepsHead]
            stepsHead += 1
            if stepsHead == steps.count {
                steps.removeAll(keepingCapacity: true)
                stepsHead = 0
            }
            lock.unlock()
            let state = step.stream.handshake()
            lock.lock()
            results.append(Result(place: step.place, generation: step.generation, state: state))
            if !wakeSent {
                wakeSent = true
                // A full socket buffer holds a datagram already: the worker wakes anyway.
                var byte: UInt8 = 1
                _ = send(signalFD, &byte, 1, Int32(MSG_DONTWAIT))
            }
        }
        steps.removeAll()
        lock.unlock()
    }
}
