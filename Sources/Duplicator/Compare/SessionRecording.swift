/// `--dump-dir`: a bounded copy of one session's streams, kept so that a
/// (session, mirror) pair whose replies differ from main's can be written
/// as a pcapng file (`Pcapng`, `DumpWriter`). Pure: fed the same bytes as
/// the comparisons, at the same hooks, with the session's clock.
///
/// Streams: 0 the client's bytes, 1 main's replies, 2... each mirror's
/// replies (the session's leg numbers). Each keeps at most `bytesMax`
/// bytes; what comes later is counted, not kept. Memory is taken lazily,
/// as bytes arrive, and kept for the slot's next session (bounded by
/// `bytesMax` per stream). A session without `--dump-dir` has none; one
/// started while a reload turned the dumps off keeps nothing (`bytesMax` 0).
public struct SessionRecording {
    public struct Stream: Sendable {
        public var bytes: [UInt8] = []
        /// Where each received piece ends in `bytes`, and when it arrived (`nowUs`).
        public var pieceEnds: [Int] = []
        public var pieceTimesUs: [UInt64] = []
        /// Bytes past `bytesMax`, not kept.
        public var droppedBytes: UInt64 = 0

        public init() {}

        mutating func reset() {
            bytes.removeAll(keepingCapacity: true)
            pieceEnds.removeAll(keepingCapacity: true)
            pieceTimesUs.removeAll(keepingCapacity: true)
            droppedBytes = 0
        }

        /// The pieces, with absolute times (`offsetUs` added).
        public func segments(offsetUs: UInt64) -> [Pcapng.Segment] {
            var start = 0
            return pieceEnds.indices.map { index in
                defer { start = pieceEnds[index] }
                return Pcapng.Segment(timeUs: pieceTimesUs[index] &+ offsetUs, bytes: Array(bytes[start..<pieceEnds[index]]))
            }
        }
    }

    /// Pieces kept per stream; later bytes join the last piece (its time).
    public static let piecesMax = 4096

    public private(set) var bytesMax: Int
    public private(set) var streams: [Stream]
    public private(set) var startUs: UInt64 = 0

    public init(mirrorCount: Int, bytesMax: Int) {
        self.bytesMax = bytesMax
        streams = Array(repeating: Stream(), count: 2 + mirrorCount)
    }

    /// A new session starts at `nowUs`, kept up to `bytesMax` per stream
    /// if given (a reload's `--dump-bytes`), else as before.
    public mutating func reset(nowUs: UInt64, bytesMax: Int? = nil) {
        startUs = nowUs
        if let bytesMax { self.bytesMax = bytesMax }
        for index in streams.indices { streams[index].reset() }
    }

    public mutating func append(_ stream: Int, _ bytes: UnsafeRawBufferPointer, nowUs: UInt64) {
        let room = bytesMax - streams[stream].bytes.count
        let kept = min(room, bytes.count)
        streams[stream].droppedBytes &+= UInt64(bytes.count - kept)
        guard kept > 0 else { return }
        streams[stream].bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<kept]))
        let end = streams[stream].bytes.count
        if streams[stream].pieceEnds.count < Self.piecesMax {
            streams[stream].pieceEnds.append(end)
            streams[stream].pieceTimesUs.append(nowUs)
        } else {
            streams[stream].pieceEnds[Self.piecesMax - 1] = end
        }
    }
}

/// One pcapng file to write: a (session, mirror) pair whose verdict was
/// `diverged`, `shorter` or `longer`. Times are the session clock's
/// (`SessionContext.nowUs`); the writer turns them into wall-clock times.
public struct DumpRequest: Sendable {
    public var mirror: Int
    public var verdict: ReplyComparison.Verdict
    public var divergenceOffset: UInt64
    /// The client's address and the one it reached; nil if the kernel could not say.
    public var clientAddresses: ProxyAddresses?
    public var startUs: UInt64
    public var endUs: UInt64
    public var client: SessionRecording.Stream
    public var main: SessionRecording.Stream
    public var mirrorReplies: SessionRecording.Stream

    public init(mirror: Int, verdict: ReplyComparison.Verdict, divergenceOffset: UInt64, clientAddresses: ProxyAddresses?,
                startUs: UInt64, endUs: UInt64, client: SessionRecording.Stream, main: SessionRecording.Stream,
                mirrorReplies: SessionRecording.Stream) {
        self.mirror = mirror
        self.verdict = verdict
        self.divergenceOffset = divergenceOffset
        self.clientAddresses = clientAddresses
        self.startUs = startUs
        self.endUs = endUs
        self.client = client
        self.main = main
        self.mirrorReplies = mirrorReplies
    }

    /// What it holds while queued for the writer (`--dump-queue`): its
    /// streams' bytes and piece lists, and the request itself.
    public var memoryBytes: Int {
        [client, main, mirrorReplies].reduce(MemoryLayout<DumpRequest>.size) {
            $0 + $1.bytes.count + $1.pieceEnds.count * MemoryLayout<Int>.size + $1.pieceTimesUs.count * MemoryLayout<UInt64>.size
        }
    }
}

/// Where a session hands its dump requests (`DumpWriter`; a recorder in
/// tests). Called on the worker thread: must not block.
public protocol DumpSink: AnyObject, Sendable {
    func submit(_ request: DumpRequest)
}
