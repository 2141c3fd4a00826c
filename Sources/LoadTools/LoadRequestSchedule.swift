import Platform

/// When each LoadClient connection's requests start and how a completed reply
/// is counted, whichever loop drives them (epoll or io_uring): one
/// definition, so both backends pace and measure alike. The loops keep what
/// is theirs: how a request is sent and how a reply is received.
///
/// Open loop (`--rate`): requests are due at fixed times, whatever the
/// replies do, and each latency counts from its request's due time, not from
/// when it could be sent: a reply that comes late delays the requests behind
/// it on its connection, and their latencies include that wait (wrk2's
/// correction of coordinated omission).
final class LoadRequestSchedule {
    /// Nanoseconds between one connection's requests; 0: closed loop, each
    /// request sent as the previous reply arrives.
    let intervalNanos: UInt64
    private let connectionCount: Int
    /// Open loop: connections whose next request waits for its time.
    private var waitingCount = 0

    init(connections count: Int, requestsPerSecond: Double?) {
        connectionCount = count
        intervalNanos = requestsPerSecond.map { UInt64(max(1, (1e9 * Double(count) / $0).rounded())) } ?? 0
    }

    /// What the result reports as asked (0: closed loop).
    var requestsPerSecondAsked: Double {
        intervalNanos > 0 ? 1e9 * Double(connectionCount) / Double(intervalNanos) : 0
    }

    /// `connection` became active: counted. Returns true when its first
    /// request starts now (closed loop); open loop: nothing to send or
    /// receive until it is due, the connections' schedules spread evenly
    /// over one interval.
    func connected(_ connection: ClientConnection, messageSizeBytes: Int, tally: inout LoadClientTally) -> Bool {
        connection.state = .active
        tally.connectionsEstablished += 1
        tally.connectionsActive += 1
        guard intervalNanos > 0 else { return true }
        connection.sendOffset = messageSizeBytes
        connection.receiveOffset = messageSizeBytes
        return false
    }

    /// Open loop, after `connected` returned false: the first request's time.
    func scheduleFirst(_ connection: ClientConnection, nowNanos: UInt64) {
        schedule(connection, atNanos: nowNanos &+ intervalNanos * UInt64(connection.index) / UInt64(connectionCount))
    }

    /// `connection` failed: it waits for no request any more.
    func failed(_ connection: ClientConnection, tally: inout LoadClientTally) {
        if connection.state == .active { tally.connectionsActive -= 1 }
        if connection.nextRequestNanos != 0 {
            connection.nextRequestNanos = 0
            waitingCount -= 1
        }
    }

    /// Starts (`start`, at its due time) each request that is due; returns
    /// when the next one is (UInt64.max: none waits).
    func startDue(_ connections: [ClientConnection], nowNanos: UInt64,
                  start: (ClientConnection, UInt64) -> Void) -> UInt64 {
        guard waitingCount > 0 else { return .max }
        var nextNanos = UInt64.max
        for connection in connections where connection.nextRequestNanos != 0 && connection.state == .active {
            let dueNanos = connection.nextRequestNanos
            if dueNanos <= nowNanos {
                connection.nextRequestNanos = 0
                waitingCount -= 1
                start(connection, dueNanos)
            } else {
                nextNanos = min(nextNanos, dueNanos)
            }
        }
        return nextNanos
    }

    /// A new request on `connection`, started at `nowNanos` (its latency counts from
    /// there); the caller sends it.
    func begin(_ connection: ClientConnection, _ message: LoadMessage, nowNanos: UInt64) {
        connection.sequence &+= 1
        message.setSequence(connection.sequence, connection: connection.index)
        connection.sendOffset = 0
        connection.receiveOffset = 0
        connection.requestStartNanos = nowNanos
    }

    /// The whole reply of `connection`'s request arrived: its latency is
    /// counted. Returns when the next request starts now (at the time
    /// returned), or nil when it waits for its time.
    func completed(_ connection: ClientConnection, tally: inout LoadClientTally) -> UInt64? {
        let nowNanos = MonotonicClock.nowNanos()
        tally.recordRequest(latencyNanos: nowNanos - connection.requestStartNanos)
        guard intervalNanos > 0 else { return nowNanos }
        let dueNanos = connection.requestStartNanos &+ intervalNanos
        if dueNanos <= nowNanos { return dueNanos }
        schedule(connection, atNanos: dueNanos)
        return nil
    }

    private func schedule(_ connection: ClientConnection, atNanos dueNanos: UInt64) {
        connection.nextRequestNanos = dueNanos
        waitingCount += 1
    }
}
