import Duplicator

/// One connection of the replayer and where its session stands: which
/// turn, how much of it was sent, how much the target answered, what is
/// in flight. Memory (its receive buffer and comparison window) is taken
/// once per slot and kept for the slot's next session.
struct ReplaySlot {
    enum State { case idle, connecting, open, closing }

    enum Ending: Equatable {
        case none
        /// The connect failed (refused, unreachable): `errno`.
        case connectFailed(Int32)
        /// The target reset the connection, or a send or receive failed.
        case reset(Int32)
    }

    var state = State.idle
    var session = -1
    var fd: Int32 = -1
    var sending = false
    var receiving = false
    /// The turn whose request is being sent or answered.
    var turn = 0
    /// Client bytes sent so far (an offset in the session's `clientBytes`).
    var sentBytes = 0
    /// Target bytes received so far.
    var receivedBytes = 0
    var targetEnded = false
    var wroteShutdown = false
    /// All turns were answered (or timed out): waiting for the target's EOF.
    var draining = false
    var turnStartUs: UInt64 = 0
    var sessionStartUs: UInt64 = 0
    /// When the current turn's request was all sent (the turn timeout counts from there).
    var waitingSinceUs: UInt64 = 0
    var ending = Ending.none
    /// Recorded reply bytes given to the comparison, and whether it was told they end.
    var recordedFed = 0
    var recordedEnded = false
    var comparison: ReplyComparison?
    let receiveBuffer: UnsafeMutableRawPointer
    let window: UnsafeMutableRawPointer?
    /// With dumps: the target's replies, and when each piece came (bounded).
    var targetReplies = SessionRecordingStream()
    var clientPieces = SessionRecordingStream()

    init(receiveBytes: Int, windowBytes: Int?) {
        receiveBuffer = .allocate(byteCount: receiveBytes, alignment: 64)
        window = windowBytes.map { .allocate(byteCount: $0, alignment: 64) }
        if let window, let windowBytes { comparison = ReplyComparison(window: window, windowBytes: windowBytes) }
    }

    func deallocate() {
        receiveBuffer.deallocate()
        window?.deallocate()
    }

    mutating func reset(session: Int, fd: Int32) {
        state = .connecting
        self.session = session
        self.fd = fd
        sending = false
        receiving = false
        turn = 0
        sentBytes = 0
        receivedBytes = 0
        targetEnded = false
        wroteShutdown = false
        draining = false
        ending = .none
        recordedFed = 0
        recordedEnded = false
        comparison?.reset()
        targetReplies.reset()
        clientPieces.reset()
    }

    var inFlight: Bool { sending || receiving || state == .connecting }
}

/// A bounded stream of pieces with their times, for a dump.
struct SessionRecordingStream {
    var bytes: [UInt8] = []
    var pieceEnds: [Int] = []
    var pieceTimesUs: [UInt64] = []
    var droppedBytes: UInt64 = 0

    mutating func reset() {
        bytes.removeAll(keepingCapacity: true)
        pieceEnds.removeAll(keepingCapacity: true)
        pieceTimesUs.removeAll(keepingCapacity: true)
        droppedBytes = 0
    }

    mutating func append(_ source: UnsafeRawBufferPointer, bytesMax: Int, timeUs: UInt64) {
        let kept = min(source.count, max(0, bytesMax - bytes.count))
        droppedBytes += UInt64(source.count - kept)
        guard kept > 0 else { return }
        bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: source[0..<kept]))
        pieceEnds.append(bytes.count)
        pieceTimesUs.append(timeUs)
    }

    var stream: SessionRecording.Stream {
        var stream = SessionRecording.Stream()
        stream.bytes = bytes
        stream.pieceEnds = pieceEnds
        stream.pieceTimesUs = pieceTimesUs
        stream.droppedBytes = droppedBytes
        return stream
    }
}
