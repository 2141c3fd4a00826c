/// `--record-dir`: what one session keeps of its client's bytes and main's
/// replies, with their arrival times, to be written as a pcapng file when
/// it ends (`RecordWriter`). A session feature beside `Session`: the
/// session calls `begin` when it starts, `append` as bytes pass, and
/// `finish` when every leg is closed. Bounded by `bytesMax` per direction
/// (later bytes are counted, not kept); memory is taken as bytes arrive and
/// kept for the slot's next session.
public struct SessionRecordTap {
    public private(set) var recording: SessionRecording
    /// This session is recorded (drawn by `--record-sample`).
    public private(set) var sampled = false
    /// The client's address and the one it reached; nil if the kernel could not say.
    public var addresses: ProxyAddresses?

    public init(bytesMax: Int) {
        recording = SessionRecording(mirrorCount: 0, bytesMax: bytesMax)
    }

    public mutating func begin(nowUs: UInt64, sampled: Bool) {
        self.sampled = sampled
        addresses = nil
        if sampled { recording.reset(nowUs: nowUs) }
    }

    @inline(__always)
    public mutating func appendClient(_ bytes: UnsafeRawBufferPointer, nowUs: UInt64) {
        if sampled { recording.append(0, bytes, nowUs: nowUs) }
    }

    @inline(__always)
    public mutating func appendMain(_ bytes: UnsafeRawBufferPointer, nowUs: UInt64) {
        if sampled { recording.append(1, bytes, nowUs: nowUs) }
    }

    /// The session is over: its request to the writer (copies of the
    /// streams: the memory stays with the slot), or nil when not sampled.
    public mutating func finish(nowUs: UInt64) -> RecordRequest? {
        guard sampled else { return nil }
        sampled = false
        return RecordRequest(clientAddresses: addresses, startUs: recording.startUs, endUs: nowUs,
                             client: recording.streams[0], main: recording.streams[1])
    }
}

/// One session to write as a pcapng file (`RecordWriter`). Times are the
/// session clock's; the writer turns them into wall-clock times.
public struct RecordRequest: Sendable {
    public var clientAddresses: ProxyAddresses?
    public var startUs: UInt64
    public var endUs: UInt64
    public var client: SessionRecording.Stream
    public var main: SessionRecording.Stream

    public var memoryBytes: Int {
        [client, main].reduce(MemoryLayout<RecordRequest>.size) {
            $0 + $1.bytes.count + $1.pieceEnds.count * MemoryLayout<Int>.size + $1.pieceTimesUs.count * MemoryLayout<UInt64>.size
        }
    }
}

/// Where sessions hand their recordings (`RecordWriter`; a recorder in
/// tests). Called on a worker thread: must not block.
public protocol RecordSink: AnyObject, Sendable {
    func submit(_ request: RecordRequest)
    /// A session not drawn by `--record-sample`, counted.
    func sampledOut()
}
