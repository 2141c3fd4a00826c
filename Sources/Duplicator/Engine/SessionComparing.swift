import Ring

/// The session's side of `--compare` and `--dump-dir`: which bytes reach its
/// `CompareTap` and `RecordingTap`, and the verdicts once it is over.
extension Session {
    /// Bytes of main's reply stream, in `slot`, go to every mirror's comparison.
    func compareMain(slot: UInt32, length: Int, _ compareTap: CompareTap) {
        let bytes = UnsafeRawBufferPointer(start: context.pool.pointer(slot), count: length)
        if records { recordingTap!.append(.main, bytes, nowUs: context.nowUs) }
        compareTap.mainReplied(bytes, mirrors: limits.mirrorCount)
    }

    /// `--dump-dir`: the mirror's replies are still read (into slots) to be
    /// recorded, after its verdict is decided, until its recording is full.
    func recordingWants(_ leg: Leg) -> Bool {
        guard records, let recordingTap else { return false }
        return recordingTap.wants(leg)
    }

    /// A mirror's reply read into a slot (`--compare`): compared, its slot
    /// given back at once, then handled as a discarded reply.
    func mirrorReplied<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, slot: UInt32?, io: IO) {
        let mirror = leg.mirrorIndex
        if let slot {
            context.pool.adopt(slot)
            if case .done(let length) = outcome, let compareTap {
                let bytes = UnsafeRawBufferPointer(start: context.pool.pointer(slot), count: length)
                if records { recordingTap!.append(leg, bytes, nowUs: context.nowUs) }
                compareTap.mirrorReplied(mirror, bytes)
            }
            legs[leg].read = .idle
            releaseSlot(slot, from: leg, io: io)
        }
        if case .noBuffer = outcome {
            // No free slot: main's path comes first, so this pair is given up
            // (incomplete) and the mirror's replies are discarded from now on.
            legs[leg].read = .idle
            compareTap?.abandon(mirror)
            armReceive(leg, io: io)
            return
        }
        discarded(leg, outcome, io: io)
    }

    /// Each mirror's verdict, once its session is over (every leg closed):
    /// exactly one per (session, mirror) the mirror was chosen for.
    func recordVerdicts(_ compareTap: CompareTap) {
        guard compareTap.comparing else { return }
        for mirror in 0..<limits.mirrorCount where !legs[.mirror(mirror)].sampledOut {
            let comparison = compareTap[mirror]
            context.stats.mirrors[mirror].comparisons.record(comparison.verdict,
                                                             divergenceOffset: comparison.divergenceOffset)
            if let sink = context.dumpSink, let request = recordingTap?.dump(mirror: mirror, comparison, endUs: context.nowUs) {
                sink.submit(request)
            }
        }
    }
}
