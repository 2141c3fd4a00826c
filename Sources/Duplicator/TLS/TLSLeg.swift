import Glibc
import Ring

/// The TLS side of one leg of a session: the client's (`--tls-cert`), or
/// main's (`--forward-tls`) or a mirror's (`--mirror-tls`): its stream,
/// where its handshake is, the ciphertext being sent, and which of its
/// session's requests on the leg wait for that ciphertext to be sent.
struct TLSLeg {
    enum Phase: UInt8 {
        /// No connection: the session's place is free, or the leg is not open.
        case idle
        /// Main's or a mirror's TCP connect is in flight.
        case connecting
        /// The handshake runs. The client's: the session has not started
        /// (nothing connects to main or a mirror). Main's or a mirror's: the
        /// session's connect has not completed yet, to the session.
        case handshaking
        /// The session runs over the stream.
        case established
        /// Closed, or waiting for its own operations to complete before the close.
        case closing
    }

    /// Ciphertext sent at once at most: more than one whole record (16 KiB
    /// of plaintext and its overhead), so a record never waits for a second send.
    static let outputBytesMax = 17 * 1024

    var phase = Phase.idle
    var session: UInt32
    let leg: Leg
    /// Main's or a mirror's: the session's connect, completed once the handshake is done.
    var connectTag: CompletionTag?
    var fd: Int32 = -1
    /// Tags the TLS layer's own operations (`tlsRecv`, `tlsSend`): a reused place's late completions are recognised.
    var generation: UInt16 = 0
    var stream: TLSStream?
    var handshakeDeadlineMs: UInt64 = 0
    /// The layer's own receive (handshake) and send (ciphertext) in flight.
    var receiving = false
    var sending = false
    /// A handshake receive found no free slot: tried again at the tick.
    var waitsForBuffer = false
    /// The handshake thread runs a step on `stream`: nothing here touches
    /// the stream until the step's result is taken (`HandshakeThread`).
    var stepping = false
    /// The session cancelled the leg's operations: nothing more is asked of the socket.
    var cancelled = false
    /// Ciphertext taken from the stream, `outputStart..<outputEnd` still to send.
    var output: UnsafeMutableRawPointer?
    var outputStart = 0
    var outputEnd = 0
    /// The session's send and shutdown, completed once the ciphertext they made is sent.
    var sessionSendTag: CompletionTag?
    var sessionSendLength = 0
    var sessionShutdownTag: CompletionTag?
    /// The session's close, done once the layer's own operations are over.
    var closeTag: CompletionTag?
    /// A send failed (a negated errno): the session's later sends get it.
    var sendError: Int32 = 0
    /// `--accept-proxy`: the PROXY protocol header before the ClientHello
    /// (plaintext), read whole before the handshake and handed to the
    /// session as its first bytes.
    var proxyHeader: [UInt8] = []
    var proxyHeaderRead = false

    init(session: UInt32, leg: Leg) {
        self.session = session
        self.leg = leg
    }

    var hasOperationsInFlight: Bool { receiving || sending }

    /// Starts a new client on this place.
    mutating func begin(fd: Int32, stream: TLSStream, deadlineMs: UInt64) {
        precondition(phase == .idle && output == nil)
        self = TLSLeg(session: session, leg: leg, generation: generation &+ 1)
        phase = .handshaking
        self.fd = fd
        self.stream = stream
        handshakeDeadlineMs = deadlineMs
        output = .allocate(byteCount: Self.outputBytesMax, alignment: 16)
    }

    private init(session: UInt32, leg: Leg, generation: UInt16) {
        self.session = session
        self.leg = leg
        self.generation = generation
    }

    /// The stream and the output buffer go; the place can take a new client.
    mutating func release() {
        output?.deallocate()
        self = TLSLeg(session: session, leg: leg, generation: generation)
    }

    func tag(_ kind: OperationKind) -> CompletionTag {
        CompletionTag(kind: kind, leg: leg, generation: generation, session: session)
    }
}
