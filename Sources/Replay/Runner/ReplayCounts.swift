import Duplicator

/// What a replay did so far: read by the progress line and the summary.
public struct ReplayCounts: Sendable, Equatable {
    public var sessions = 0
    public var sessionsStarted = 0
    public var sessionsDone = 0
    /// Per `ReplyComparison.Verdict.rawValue`, with `--compare`.
    public var verdicts = [Int](repeating: 0, count: ReplyComparison.Verdict.allCases.count)
    /// Sessions whose connect failed, and the first failure's errno.
    public var connectFailed = 0
    public var firstConnectErrno: Int32 = 0
    /// Sessions the target reset (or whose send or receive failed).
    public var resets = 0
    /// Turns sent after the turn timeout instead of the target's full reply.
    public var turnsTimedOut = 0
    /// Turns with client bytes sent, and the bytes each way.
    public var requests = 0
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// With `--dump-dir`: dumps handed to the writer.
    public var dumpsSubmitted = 0

    public init() {}

    public func count(_ verdict: ReplyComparison.Verdict) -> Int { verdicts[verdict.rawValue] }
}
