import Ring
import Testing
@testable import Duplicator

/// The io_uring backend's bookkeeping of zero-copy sends (`ZeroCopySends`):
/// one completion per send for the session, and no slot lent out again
/// before the kernel's notification says it no longer reads it.
@Suite("ZeroCopySends: one completion per send, slots held until notified")
struct ZeroCopySendsTests {
    let sessionTag = CompletionTag(kind: OperationKind.send.rawValue, leg: 2, generation: 7, session: 42)

    /// A record of a send that read `slots`.
    private func send(_ sends: ZeroCopySends, slots: [UInt32]) throws -> UInt32 {
        let record = try #require(sends.open(sessionTag: sessionTag))
        for slot in slots { sends.add(slot: slot, to: record) }
        return record
    }

    /// Completes `record` as the ring would, collecting the slots given back.
    private func complete(_ sends: ZeroCopySends, _ record: UInt32, notification: Bool, hasMore: Bool = true,
                          recycled: inout [UInt32]) -> CompletionTag? {
        var back: [UInt32] = []
        let tag = sends.completed(record, isNotification: notification, hasMore: hasMore) { back.append($0) }
        recycled += back
        return tag
    }

    @Test("the result goes to the session; a slot let go meanwhile comes back only with the notification")
    func resultThenNotification() throws {
        let sends = ZeroCopySends(capacity: 4, slotsPerRecord: 4, poolSlots: 16)
        let record = try send(sends, slots: [3, 5])
        #expect(sends.tag(of: record).kind == ZeroCopySends.completionKind)
        #expect(sends.tag(of: record).session == record)
        var recycled: [UInt32] = []
        #expect(complete(sends, record, notification: false, recycled: &recycled) == sessionTag)
        // The session releases both slots after the result: they wait.
        #expect(sends.deferRecycle(3) && sends.deferRecycle(5))
        #expect(sends.slotsDeferred == 2 && sends.openRecords == 1 && recycled.isEmpty)
        #expect(complete(sends, record, notification: true, recycled: &recycled) == nil)
        #expect(recycled.sorted() == [3, 5])
        #expect(sends.slotsDeferred == 0 && sends.openRecords == 0)
        // Free again: recycled at once from now on.
        #expect(!sends.deferRecycle(3))
    }

    @Test("a slot still held by another leg when notified is not given back; its last release recycles it at once")
    func slotReleasedAfterNotification() throws {
        let sends = ZeroCopySends(capacity: 4, slotsPerRecord: 4, poolSlots: 16)
        let record = try send(sends, slots: [9])
        var recycled: [UInt32] = []
        _ = complete(sends, record, notification: false, recycled: &recycled)
        _ = complete(sends, record, notification: true, recycled: &recycled)
        #expect(recycled.isEmpty)
        #expect(!sends.deferRecycle(9))
    }

    @Test("a slot read by two sends (main's and a mirror's) waits for both notifications")
    func twoHolders() throws {
        let sends = ZeroCopySends(capacity: 4, slotsPerRecord: 4, poolSlots: 16)
        let main = try send(sends, slots: [1])
        let mirror = try send(sends, slots: [1, 2])
        var recycled: [UInt32] = []
        _ = complete(sends, main, notification: false, recycled: &recycled)
        _ = complete(sends, mirror, notification: false, recycled: &recycled)
        #expect(sends.deferRecycle(1) && sends.deferRecycle(2))
        _ = complete(sends, mirror, notification: true, recycled: &recycled)
        #expect(recycled == [2])
        _ = complete(sends, main, notification: true, recycled: &recycled)
        #expect(recycled == [2, 1])
        #expect(sends.openRecords == 0 && sends.slotsDeferred == 0)
    }

    @Test("a result without hasMore has no notification: its slots and record are free at once")
    func resultWithoutNotification() throws {
        let sends = ZeroCopySends(capacity: 1, slotsPerRecord: 2, poolSlots: 4)
        let record = try send(sends, slots: [0])
        var recycled: [UInt32] = []
        #expect(complete(sends, record, notification: false, hasMore: false, recycled: &recycled) == sessionTag)
        #expect(sends.openRecords == 0)
        #expect(!sends.deferRecycle(0))
        #expect(sends.open(sessionTag: sessionTag) == record)
    }

    @Test("a notification before its result still gives the session one completion")
    func notificationFirst() throws {
        let sends = ZeroCopySends(capacity: 1, slotsPerRecord: 2, poolSlots: 4)
        let record = try send(sends, slots: [2])
        var recycled: [UInt32] = []
        #expect(complete(sends, record, notification: true, recycled: &recycled) == nil)
        #expect(sends.openRecords == 1)
        #expect(complete(sends, record, notification: false, recycled: &recycled) == sessionTag)
        #expect(sends.openRecords == 0 && recycled.isEmpty)
    }

    @Test("when every record is taken a send goes without zero copy; notified records are reused")
    func capacity() throws {
        let sends = ZeroCopySends(capacity: 2, slotsPerRecord: 1, poolSlots: 4)
        let first = try #require(sends.open(sessionTag: sessionTag))
        let second = try #require(sends.open(sessionTag: sessionTag))
        #expect(first != second)
        #expect(sends.open(sessionTag: sessionTag) == nil)
        var recycled: [UInt32] = []
        _ = complete(sends, first, notification: false, recycled: &recycled)
        #expect(sends.open(sessionTag: sessionTag) == nil)
        _ = complete(sends, first, notification: true, recycled: &recycled)
        #expect(sends.open(sessionTag: sessionTag) == first)
    }

    @Test("zero-copy completions carry a kind no session operation has")
    func ownKind() {
        #expect(OperationKind(rawValue: ZeroCopySends.completionKind) == nil)
    }

    @Test("--zerocopy auto never sends zero-copy towards this host, on always, off never",
          arguments: ZeroCopyMode.allCases)
    func eligibility(mode: ZeroCopyMode) {
        #expect(ZeroCopySends.eligible(mode: mode, peerIsLocal: false) == (mode != .off))
        #expect(ZeroCopySends.eligible(mode: mode, peerIsLocal: true) == (mode == .on))
        #expect(ZeroCopySends.eligible(mode: mode, peerIsLocal: nil) == (mode == .on))
    }
}
