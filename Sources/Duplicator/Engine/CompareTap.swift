/// `--compare`: one `ReplyComparison` per mirror slot, fed main's reply
/// stream (to every mirror's) and each mirror's own replies as they arrive,
/// in memory the session's table owns (no copy kept beyond each window).
/// The session decides when bytes and ends reach it; the comparisons decide
/// the verdicts.
struct CompareTap {
    private let comparisons: UnsafeMutablePointer<ReplyComparison>
    /// Whether this session compares (a reload may switch `--compare` off
    /// and on for new sessions; the windows stay reserved): beside the
    /// comparisons, so that the tap itself stays a constant of the session.
    private let switchedOn: UnsafeMutablePointer<Bool>
    /// The mirror slots it has a comparison for.
    let capacity: Int

    /// - Parameter windows: `mirrorCount` windows of `windowBytes` each, owned by the caller.
    init(windows: UnsafeMutableRawPointer, windowBytes: Int, mirrorCount: Int) {
        capacity = mirrorCount
        comparisons = .allocate(capacity: mirrorCount)
        switchedOn = .allocate(capacity: 1)
        switchedOn.initialize(to: true)
        for mirror in 0..<mirrorCount {
            (comparisons + mirror).initialize(to: ReplyComparison(window: windows + mirror * windowBytes,
                                                                  windowBytes: windowBytes))
        }
    }

    /// Once, when the session goes.
    func deallocate() {
        comparisons.deinitialize(count: capacity)
        comparisons.deallocate()
        switchedOn.deallocate()
    }

    /// Mirror `mirror`'s comparison (its verdict once decided).
    subscript(mirror: Int) -> ReplyComparison { comparisons[mirror] }

    /// A new session, comparing the first `mirrors` mirror slots, or none
    /// (its configuration has `--compare` off): then every pair is decided
    /// at once, so no byte is kept or compared, and none gets a verdict.
    func reset(mirrors: Int, comparing: Bool) {
        switchedOn.pointee = comparing
        for mirror in 0..<mirrors {
            comparisons[mirror].reset()
            if !comparing { comparisons[mirror].abandon() }
        }
    }

    /// Whether this session's pairs get verdicts.
    var comparing: Bool { switchedOn.pointee }

    func isOpen(_ mirror: Int) -> Bool { comparisons[mirror].isOpen }

    /// Whether any of the first `mirrors` comparisons still takes bytes.
    func anyOpen(mirrors: Int) -> Bool {
        for mirror in 0..<mirrors where comparisons[mirror].isOpen { return true }
        return false
    }

    /// The mirror's replies lead main's past what its window keeps: read
    /// them later (`ReplyComparison.mirrorShouldWait`).
    func mirrorShouldWait(_ mirror: Int, forBytes count: Int) -> Bool {
        comparisons[mirror].mirrorShouldWait(forBytes: count)
    }

    /// Main's reply bytes, for every mirror's comparison.
    func mainReplied(_ bytes: UnsafeRawBufferPointer, mirrors: Int) {
        for mirror in 0..<mirrors { comparisons[mirror].append(.main, bytes) }
    }

    func mirrorReplied(_ mirror: Int, _ bytes: UnsafeRawBufferPointer) {
        comparisons[mirror].append(.mirror, bytes)
    }

    /// Main's reply stream ended (its EOF).
    func mainEnded(mirrors: Int) {
        for mirror in 0..<mirrors { comparisons[mirror].end(.main) }
    }

    func mirrorEnded(_ mirror: Int) {
        comparisons[mirror].end(.mirror)
    }

    /// The pair cannot be compared (the mirror missed bytes, or main's
    /// replies were lost): its verdict is `incomplete`.
    func abandon(_ mirror: Int) {
        comparisons[mirror].abandon()
    }

    func abandonAll(mirrors: Int) {
        for mirror in 0..<mirrors { comparisons[mirror].abandon() }
    }
}
