/// `--dump-dir`: what a session's streams were (`SessionRecording`, up to
/// `dumpBytes` each) and the client's addresses, so that a pair whose
/// replies differ can be written as a pcapng dump once its verdict is known.
/// The session hands it the bytes; the tap decides what it keeps and what
/// goes to the dump.
struct RecordingTap {
    private(set) var recording: SessionRecording
    /// The client's address and the one it reached.
    private(set) var addresses: ProxyAddresses?

    init(mirrorCount: Int, bytesMax: Int) {
        recording = SessionRecording(mirrorCount: mirrorCount, bytesMax: bytesMax)
    }

    /// A new session starts at `nowUs`, recorded up to `bytesMax` per
    /// stream (its generation's `--dump-bytes`; 0: a reload turned dumps off).
    mutating func reset(nowUs: UInt64, bytesMax: Int? = nil) {
        recording.reset(nowUs: nowUs, bytesMax: bytesMax)
        addresses = nil
    }

    mutating func connected(_ addresses: ProxyAddresses?) {
        self.addresses = addresses
    }

    /// Bytes of `leg`'s stream: the client's, main's replies, a mirror's replies.
    @inline(__always)
    mutating func append(_ leg: Leg, _ bytes: UnsafeRawBufferPointer, nowUs: UInt64) {
        recording.append(leg.index, bytes, nowUs: nowUs)
    }

    /// The leg's stream is not full yet: a mirror's replies are still read
    /// (into slots) to be recorded, after its verdict is decided.
    func wants(_ leg: Leg) -> Bool {
        recording.streams[leg.index].bytes.count < recording.bytesMax
    }

    /// The dump of a pair with `comparison`'s verdict, if it has one (the
    /// replies differ), ending at `endUs`. A copy: the recording's memory
    /// stays with the session's next client.
    func dump(mirror: Int, _ comparison: ReplyComparison, endUs: UInt64) -> DumpRequest? {
        guard recording.bytesMax > 0 else { return nil }
        return switch comparison.verdict {
        case .diverged, .shorter, .longer:
            DumpRequest(mirror: mirror, verdict: comparison.verdict, divergenceOffset: comparison.divergenceOffset,
                        clientAddresses: addresses, startUs: recording.startUs, endUs: endUs,
                        client: recording.streams[Leg.client.index], main: recording.streams[Leg.main.index],
                        mirrorReplies: recording.streams[Leg.mirror(mirror).index])
        case .match, .incomplete:
            nil
        }
    }
}
