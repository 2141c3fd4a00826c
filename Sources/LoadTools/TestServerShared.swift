import Synchronization

/// What a TestServer's thread shares with the threads that control and observe it.
final class TestServerShared: Sendable {
    let stopRequested = Atomic<Bool>(false)
    // Written only by the server thread (see addFromOwner).
    let totalBytesReceived = Atomic<UInt64>(0)
    let totalBytesSent = Atomic<UInt64>(0)
    let totalLinesReceived = Atomic<UInt64>(0)
    let connectionsAccepted = Atomic<UInt64>(0)
    let connectionsOpen = Atomic<Int>(0)
    let acceptFailures = Atomic<UInt64>(0)

    let computesDigests: Bool
    let retainedClosedRecordsMax: Int
    // Locked only on accept, on pruning and by readers, never per byte.
    private let records = Mutex<[ConnectionRecordCell]>([])

    init(computesDigests: Bool, retainedClosedRecordsMax: Int) {
        self.computesDigests = computesDigests
        self.retainedClosedRecordsMax = retainedClosedRecordsMax
    }

    func append(_ record: ConnectionRecordCell) {
        records.withLock { $0.append(record) }
    }

    /// Server thread only: forgets the `count` oldest closed records.
    func dropOldestClosedRecords(count: Int) {
        records.withLock { records in
            var remaining = count
            records.removeAll { record in
                guard remaining > 0, !record.isOpenForWriter else { return false }
                remaining -= 1
                return true
            }
        }
    }

    func snapshot() -> [ConnectionRecord] {
        let cells = records.withLock { $0 }
        return cells.map { $0.snapshot() }
    }
}
