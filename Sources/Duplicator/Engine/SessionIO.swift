import Ring

/// What the operations of the proxy are tagged with (`CompletionTag.kind`).
public enum OperationKind: UInt8, Sendable {
    case accept = 1
    case recv
    case discard
    case send
    case connect
    case connectTimeout
    case shutdown
    case cancel
    case close
    /// The worker's cancel of its own accept, on stop: nothing to do when it completes.
    case acceptCancel
    /// `--tls-cert`: the TLS layer's own receive (handshake) and send
    /// (ciphertext) on a client's socket (`TLSClientIO`); never a session's.
    case tlsRecv
    case tlsSend
    /// The TLS handshake thread's wake: steps are done (`HandshakeThread`).
    case tlsStepped
}

/// The session's timers: each has one delay, so its deadlines come in order.
public enum SessionTimer: UInt8, Sendable {
    /// A mirror's batch is due (`mirrorBatchDelayUs`).
    case mirrorBatch
    /// A mirror has not answered a turn in time (`mirrorTurnTimeoutUs`).
    case mirrorTurn
}

/// The IO a `Session` asks for. The session is sans-IO: it never calls the
/// kernel itself, it asks through this interface and is told of outcomes as
/// completions. The `Worker` implements it over a real `Ring`; tests
/// implement it with a scripted fake that decides every outcome.
///
/// Every request except `openSocket` and `recycle` completes later with
/// exactly one completion carrying `tag` (`cancel` and `close` completions
/// are ignored by the session).
public protocol SessionIO: AnyObject {
    var pool: BufferPool { get }
    /// A new non-blocking TCP socket for `leg` (main or a mirror), or a negated errno.
    func openSocket(for leg: Leg) -> Int32
    /// Connect to `leg`'s address, cancelled after `timeoutMs` (0: none).
    func connect(fd: Int32, leg: Leg, timeoutMs: Int, tag: CompletionTag, timeoutTag: CompletionTag)
    /// Receive into a pool slot chosen when data arrives (`selectedBuffer`):
    /// client and main, and with `--compare` a mirror whose replies are
    /// still being compared (its slot is given back in the same completion).
    func recv(fd: Int32, tag: CompletionTag)
    /// Receive into scratch memory; the bytes are thrown away (a mirror's
    /// replies, unless compared).
    func discard(fd: Int32, tag: CompletionTag)
    func send(fd: Int32, slot: UInt32, offset: Int, length: Int, tag: CompletionTag)
    /// Send from the session's own memory (its PROXY protocol header), which
    /// stays put until the completion.
    func send(fd: Int32, from bytes: UnsafeRawPointer, length: Int, tag: CompletionTag)
    /// Whom the accepted `fd` is from and the address it reached (for
    /// `--send-proxy`); nil if the kernel cannot say.
    func addresses(fd: Int32) -> ProxyAddresses?
    /// One send of the first `chunks` chunks of `queue` (`length` bytes in
    /// all), in order; it may send fewer bytes, as any send may. The chunks
    /// stay in the queue, untouched, until it completes.
    func sendGathered(fd: Int32, queue: SendQueue, chunks: Int, length: Int, tag: CompletionTag)
    /// Call `timerFired(timer)` on the session at `index` once the clock
    /// (`SessionContext.nowUs`) reaches `deadlineUs`. Asked at most once per
    /// session and timer until called; every request of one timer is for
    /// now plus the same delay, so they come in order of deadline. The
    /// session may have ended and restarted by then.
    func wake(session index: UInt32, atUs deadlineUs: UInt64, for timer: SessionTimer)
    /// A mirror's replies need no longer wake the session one by one: discard
    /// them in batches (`--mirror-discard-batch`) from now on.
    func discardInBatches(fd: Int32)
    func shutdownWrite(fd: Int32, tag: CompletionTag)
    /// Cancel every operation in flight on `fd`.
    func cancel(fd: Int32, tag: CompletionTag)
    func close(fd: Int32, tag: CompletionTag)
    /// Bytes the kernel still holds for `fd` that its peer has not
    /// acknowledged (SIOCOUTQ). Asked once per mirror, when its linger ends.
    func unsentBytes(fd: Int32) -> Int
    /// `slot`'s last holder let go: lend it out again.
    func recycle(slot: UInt32)
    /// The session at `index` found no free slot: call `resumeReceiving` on
    /// it once slots are back.
    func waitForBuffers(session index: UInt32)
    /// A free pool slot for bytes that no receive brought (TLS records
    /// decrypted beyond a receive's slot), or nil when none is free now.
    func takeSlot() -> UInt32?
}

extension SessionIO {
    /// An IO that never terminates TLS (the tests' and benchmarks' fakes) lends no slot outside a receive.
    public func takeSlot() -> UInt32? { nil }
}
