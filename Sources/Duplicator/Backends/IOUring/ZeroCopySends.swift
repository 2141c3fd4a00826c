import Glibc
import Ring

/// The zero-copy sends of one worker (`--zerocopy`), between the send and
/// its notification: the io_uring backend's bookkeeping, which sessions
/// never see.
///
/// A zero-copy send completes twice with the same tag: its result (with
/// `hasMore` when a notification follows), then the notification, once the
/// kernel no longer reads the send's pages. The session must get exactly one
/// completion, the result; and no slot the send read may be lent out again
/// before the notification. So the send carries a tag of its own
/// (`completionKind`, with a record's index as its session field); the
/// record keeps the session's tag and the slots the send read, and each slot
/// counts the records that hold it. A slot whose last holder lets go while
/// records still hold it waits (`deferRecycle`) until the last of them is
/// notified.
///
/// Fixed capacity, allocated at start; when every record is taken, the
/// caller sends without zero copy.
final class ZeroCopySends {
    /// The completion kind of zero-copy sends: no session operation has it.
    static let completionKind: UInt8 = 0xE0
    /// Slots one record holds at most: a gathered send's chunks.
    let slotsPerRecord: Int
    let capacity: Int
    private let sessionTags: UnsafeMutablePointer<UInt64>
    private let recordSlots: UnsafeMutablePointer<UInt32>
    private let slotCounts: UnsafeMutablePointer<UInt8>
    /// Per record: bit 0, the result is still to come; bit 1, the notification.
    private let awaiting: UnsafeMutablePointer<UInt8>
    private let freeRecords: UnsafeMutablePointer<UInt32>
    private var freeCount = 0
    /// Records below this index have been used; those above never were
    /// (their memory untouched).
    private var usedRecords = 0
    /// Per pool slot: records that hold it.
    private let holders: UnsafeMutablePointer<UInt32>
    /// Per pool slot: its last holder in the pool let go while records held it.
    private let deferred: UnsafeMutablePointer<Bool>
    private let slotCount: Int
    /// Records taken now: sends whose result or notification is to come.
    private(set) var openRecords = 0
    /// Slots free but for the notifications they wait for.
    private(set) var slotsDeferred = 0

    /// Whether a connection's sends may be zero-copy: with `auto` never
    /// towards this host (`peerIsLocal`, or unknown), where the kernel copies
    /// anyway and the notification only adds work (BENCHMARKS.md).
    static func eligible(mode: ZeroCopyMode, peerIsLocal: Bool?) -> Bool {
        switch mode {
        case .on: true
        case .off: false
        case .auto: peerIsLocal == false
        }
    }

    private static let awaitingResult: UInt8 = 1
    private static let awaitingNotification: UInt8 = 2

    init(capacity: Int, slotsPerRecord: Int, poolSlots: Int) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max) && slotsPerRecord > 0 && slotsPerRecord < 256)
        self.capacity = capacity
        self.slotsPerRecord = slotsPerRecord
        slotCount = poolSlots
        sessionTags = .allocate(capacity: capacity)
        recordSlots = .allocate(capacity: capacity * slotsPerRecord)
        slotCounts = .allocate(capacity: capacity)
        awaiting = .allocate(capacity: capacity)
        freeRecords = .allocate(capacity: capacity)
        holders = .allocate(capacity: poolSlots)
        holders.initialize(repeating: 0, count: poolSlots)
        deferred = .allocate(capacity: poolSlots)
        deferred.initialize(repeating: false, count: poolSlots)
    }

    deinit {
        sessionTags.deallocate()
        recordSlots.deallocate()
        slotCounts.deallocate()
        awaiting.deallocate()
        freeRecords.deallocate()
        holders.deallocate()
        deferred.deallocate()
    }

    /// A record for a send of the session's `tag`, or nil when all are
    /// taken (send without zero copy then). Add its slots, then send with
    /// `tag(of:)`.
    @inline(__always)
    func open(sessionTag: CompletionTag) -> UInt32? {
        let record: Int
        if freeCount > 0 {
            freeCount &-= 1
            record = Int(freeRecords[freeCount])
        } else if usedRecords < capacity {
            record = usedRecords
            usedRecords &+= 1
        } else {
            return nil
        }
        sessionTags[record] = sessionTag.rawValue
        slotCounts[record] = 0
        awaiting[record] = Self.awaitingResult | Self.awaitingNotification
        openRecords &+= 1
        return UInt32(record)
    }

    /// The send of `record` reads `slot`: it is not lent out again before
    /// the notification.
    @inline(__always)
    func add(slot: UInt32, to record: UInt32) {
        let count = Int(slotCounts[Int(record)])
        precondition(count < slotsPerRecord && Int(slot) < slotCount)
        recordSlots[Int(record) &* slotsPerRecord &+ count] = slot
        slotCounts[Int(record)] = UInt8(count &+ 1)
        holders[Int(slot)] &+= 1
    }

    /// The tag the zero-copy send of `record` carries.
    @inline(__always)
    func tag(of record: UInt32) -> CompletionTag {
        CompletionTag(kind: Self.completionKind, leg: 0, generation: 0, session: record)
    }

    /// Whether `slot` must wait for notifications before it is lent out:
    /// if so it is marked, and `completed` hands it back with the last one.
    @inline(__always)
    func deferRecycle(_ slot: UInt32) -> Bool {
        guard holders[Int(slot)] > 0 else { return false }
        precondition(!deferred[Int(slot)], "a slot recycled twice")
        deferred[Int(slot)] = true
        slotsDeferred &+= 1
        return true
    }

    /// A completion of a zero-copy send (`tag(of:)`). For its result:
    /// returns the session's tag, to deliver `result` to. A result without
    /// `hasMore` has no notification to wait for. Either way, once the send
    /// is over, its slots are let go, and those that waited only for it go
    /// to `recycle`.
    @inline(__always)
    func completed(_ record: UInt32, isNotification: Bool, hasMore: Bool,
                   recycle: (UInt32) -> Void) -> CompletionTag? {
        let index = Int(record)
        precondition(index < usedRecords && awaiting[index] != 0, "a completion of no zero-copy send in flight")
        var sessionTag: CompletionTag?
        if isNotification {
            awaiting[index] &= ~Self.awaitingNotification
        } else {
            sessionTag = CompletionTag(rawValue: sessionTags[index])
            awaiting[index] &= hasMore ? ~Self.awaitingResult : 0
        }
        // The slots go with the notification (or a result that announces none).
        if awaiting[index] & Self.awaitingNotification == 0 && slotCounts[index] > 0 {
            for position in 0..<Int(slotCounts[index]) {
                let slot = Int(recordSlots[index &* slotsPerRecord &+ position])
                holders[slot] &-= 1
                if holders[slot] == 0 && deferred[slot] {
                    deferred[slot] = false
                    slotsDeferred &-= 1
                    recycle(UInt32(slot))
                }
            }
            slotCounts[index] = 0
        }
        if awaiting[index] == 0 {
            freeRecords[freeCount] = record
            freeCount &+= 1
            openRecords &-= 1
        }
        return sessionTag
    }
}
