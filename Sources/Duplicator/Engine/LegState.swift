/// One leg's state (the client, main, or a mirror), kept by its `Session`
/// in fixed memory (`Session.legs`) and reused from session to session.
extension Session {
    struct LegState {
        enum Phase: UInt8 { case idle, connecting, open, closing, closed }
        var phase = Phase.idle
        var fd: Int32 = -1
        /// Operations on `fd` whose completion has not arrived; the fd is
        /// closed only at zero.
        var inFlight: Int32 = 0
        var read = ReadState.idle
        var write = WriteState.idle
        /// The other side finished: shut our write side once `queue` is sent.
        var shutdownWanted = false
        /// A mirror that lost bytes of this session (cut, failed): later client bytes count as missed.
        var missing = false
        /// Main after the client failed: like a mirror, it gets what the
        /// client sent before the failure, then SHUT_WR, its replies discarded.
        var flushing = false
        /// Bytes of the session's outgoing PROXY protocol header this leg has
        /// been sent: it owes the rest before any queued byte.
        var proxyHeaderSent = 0
        /// A mirror this session was not chosen for (`-m ADDR@P%`): closed, nothing missed.
        var sampledOut = false
        /// A mirror's batch: when its queued bytes must go out.
        var batch = MirrorBatcher()
        /// A mirror's kept turns, and the bytes it was handed and sent.
        var turns: TurnGate
        var queue: SendQueue

        init(queue: SendQueue, turns: TurnGate = TurnGate()) {
            self.queue = queue
            self.turns = turns
        }

        /// Chunks and bytes the send in flight reads from the front of `queue`.
        var chunksInFlight: Int {
            if case .sending(let chunks, _) = write { chunks } else { 0 }
        }
        var bytesInFlight: Int {
            if case .sending(_, let bytes) = write { bytes } else { 0 }
        }
        /// Our FIN was asked for: nothing more is sent.
        var shutdownIssued: Bool {
            switch write {
            case .shuttingDown, .shutDown: true
            case .idle, .sendingHeader, .sending: false
            }
        }
    }

    /// A leg's read side: at most one receive (or discard) in flight, none
    /// after the peer's EOF.
    enum ReadState: UInt8 {
        /// Nothing in flight: one is asked for when the leg may read.
        case idle
        case receiving
        /// The peer sent EOF: nothing more is read.
        case ended
    }

    /// A leg's write side: at most one send in flight; the header before
    /// any queued byte, and our FIN (SHUT_WR) after the last.
    enum WriteState {
        /// Nothing in flight: what is queued, or the FIN once `shutdownWanted`, goes when kicked.
        case idle
        /// The session's outgoing PROXY protocol header, or its rest.
        case sendingHeader
        /// `chunks` chunks, `bytes` bytes from the front of `queue`.
        case sending(chunks: Int, bytes: Int)
        /// SHUT_WR is in flight.
        case shuttingDown
        /// SHUT_WR completed (whatever its result): nothing more goes out.
        case shutDown
    }
}

extension UnsafeMutablePointer where Pointee == Session.LegState {
    /// A session's state of `leg` (`Session.legs`).
    @inline(__always)
    subscript(leg: Leg) -> Session.LegState {
        unsafeAddress { UnsafePointer(self + leg.index) }
        nonmutating unsafeMutableAddress { self + leg.index }
    }
}
