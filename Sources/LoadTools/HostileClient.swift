/// Clients that misbehave on purpose, to measure what they cost everyone else: one
/// thread and one epoll set hold thousands of connections (see `HostileMode`).
///
/// - stall: connects, sends a large request (with an echo server as main, the reply
///   is as large) and never reads; holds the connection to the end.
/// - slow-read: the same request, then `readChunkBytes` every `readIntervalMs`; once
///   the whole reply is read, the request again (a download that never ends).
/// - slowloris: one byte every `trickleIntervalMs`, never a '\n'; reads what comes back.
///
/// A connection that ends (refused, reset, closed by the peer) is counted and not
/// replaced: how many the system under test cut off is part of the answer.
public final class HostileClient: Sendable {
    public let address: LoadAddress
    public let plan: HostilePlan

    private let control: LoadClientControl

    /// Throws `HostileClientError` for a bad parameter.
    public init(address: LoadAddress, plan: HostilePlan) throws {
        try plan.validate()
        self.address = address
        self.plan = plan
        control = try LoadClientControl()
    }

    /// Runs on the calling thread for the plan's duration (less after `stop()`), then
    /// closes every connection and returns what it saw. `onSecond` is called on this
    /// thread once a second. Throws only when the run cannot start.
    public func run(onSecond: (HostileProgress) -> Void = { _ in }) throws -> HostileResult {
        guard !control.running.exchange(true, ordering: .acquiring) else { throw HostileClientError.alreadyRunning }
        defer { control.running.store(false, ordering: .releasing) }
        let target = try address.resolve(for: .connect)
        let loop = try HostileClientLoop(plan: plan, target: target, control: control)
        return loop.run(onSecond: onSecond)
    }

    /// Ends a run soon, from any thread. Lasting, as LoadClient's.
    public func stop() {
        control.stopRequested.store(true, ordering: .releasing)
        control.wakeup.signal()
    }
}
