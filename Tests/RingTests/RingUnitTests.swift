import Glibc
import Testing
import TestSupport
@testable import Ring

@Suite("RingTests.CompletionTag")
struct CompletionTagTests {
    @Test("every field round-trips through the 64-bit user data")
    func roundTrip() {
        var rng = SeededGenerator(seed: 42)
        for _ in 0..<10_000 {
            let kind = UInt8.random(in: .min ... .max, using: &rng)
            let leg = UInt8.random(in: .min ... .max, using: &rng)
            let generation = UInt16.random(in: .min ... .max, using: &rng)
            let session = UInt32.random(in: .min ... .max, using: &rng)
            let tag = CompletionTag(kind: kind, leg: leg, generation: generation, session: session)
            #expect(tag.kind == kind && tag.leg == leg && tag.generation == generation && tag.session == session)
            let again = CompletionTag(rawValue: tag.rawValue)
            #expect(again == tag && again.hashValue == tag.hashValue)
        }
    }

    @Test("extreme values and the documented layout: kind | leg | generation | session")
    func layout() {
        let tag = CompletionTag(kind: 0xAB, leg: 0xCD, generation: 0x1234, session: 0x5678_9ABC)
        #expect(tag.rawValue == 0xABCD_1234_5678_9ABC)
        let all = CompletionTag(kind: .max, leg: .max, generation: .max, session: .max)
        #expect(all.rawValue == .max)
        #expect(CompletionTag(kind: 0, leg: 0, generation: 0, session: 0).rawValue == 0)
        // A generation change alone changes the tag: that is how stale completions are told apart.
        #expect(CompletionTag(kind: 2, leg: 1, generation: 7, session: 3)
                != CompletionTag(kind: 2, leg: 1, generation: 8, session: 3))
        #expect(tag.description == "tag(kind: 171, leg: 205, generation: 4660, session: 1450744508)")
    }

    @Test("completion flags: more, notification and the selected buffer")
    func completionFlags() {
        let tag = CompletionTag(rawValue: 99)
        let plain = Completion(tag: tag, result: 5, flags: 0)
        #expect(plain.selectedBuffer == nil && !plain.hasMore && !plain.isNotification)
        let selected = Completion(tag: tag, result: 5, flags: Ring.completionFlagBuffer | (513 << Ring.completionBufferShift))
        #expect(selected.selectedBuffer == 513)
        let noBufferFlag = Completion(tag: tag, result: 5, flags: 513 << Ring.completionBufferShift)
        #expect(noBufferFlag.selectedBuffer == nil, "the id counts only with IORING_CQE_F_BUFFER")
        let more = Completion(tag: tag, result: 5, flags: Ring.completionFlagMore)
        #expect(more.hasMore && !more.isNotification)
        let notification = Completion(tag: tag, result: 0, flags: Ring.completionFlagNotification)
        #expect(notification.isNotification && !notification.hasMore)
        #expect(Ring.completionFlagBuffer == 1 && Ring.completionFlagMore == 2 && Ring.completionFlagNotification == 8)
        #expect(Ring.completionBufferShift == 16)
    }
}

@Suite("RingTests.BufferPool")
struct BufferPoolTests {
    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    @Test("slots are rounded up to whole pages and page aligned", arguments: [1, 100, 4_096, 4_097, 16_384])
    func alignment(requested: Int) throws {
        let pool = try BufferPool(slotSize: requested, slotCount: 5)
        let page = Self.pageSize
        #expect(pool.slotSize == (requested + page - 1) / page * page)
        #expect(pool.slotSize >= requested && pool.slotSize % page == 0)
        #expect(pool.byteCount == pool.slotSize * 5)
        #expect(Int(bitPattern: pool.base) % page == 0)
        for slot in 0..<UInt32(5) {
            #expect(pool.pointer(slot) == pool.base + Int(slot) * pool.slotSize)
            #expect(Int(bitPattern: pool.pointer(slot)) % page == 0)
        }
        #expect(pool.inUse == 0 && pool.available == 5)
    }

    @Test("every byte of every slot is usable and slots do not overlap")
    func memoryIsUsable() throws {
        let pool = try BufferPool(slotSize: 4_096, slotCount: 4)
        for slot in 0..<UInt32(4) { memset(pool.pointer(slot), Int32(slot + 1), pool.slotSize) }
        for slot in 0..<UInt32(4) {
            let bytes = UnsafeRawBufferPointer(start: pool.pointer(slot), count: pool.slotSize)
            #expect(bytes.allSatisfy { $0 == UInt8(slot + 1) })
        }
    }

    @Test("adopt, retain and release count holders; the last release says so")
    func referenceCounts() throws {
        let pool = try BufferPool(slotSize: 4_096, slotCount: 4)
        pool.adopt(2)
        #expect(pool.referenceCount(2) == 1 && pool.inUse == 1 && pool.available == 3)
        pool.retain(2)
        pool.retain(2)
        #expect(pool.referenceCount(2) == 3)
        pool.adopt(0)
        #expect(pool.inUse == 2)
        #expect(pool.release(2) == false)
        #expect(pool.release(2) == false)
        #expect(pool.referenceCount(2) == 1 && pool.inUse == 2)
        #expect(pool.release(2) == true)
        #expect(pool.referenceCount(2) == 0 && pool.inUse == 1)
        #expect(pool.release(0) == true)
        #expect(pool.inUse == 0 && pool.available == 4)
        // A slot can be adopted again once free.
        pool.adopt(2)
        #expect(pool.referenceCount(2) == 1)
        #expect(pool.release(2))
        #expect((0..<UInt32(4)).allSatisfy { pool.referenceCount($0) == 0 })
    }
}

@Suite("RingTests.RingError")
struct RingErrorTests {
    @Test("the description names the operation, the errno's text and its symbol", arguments: [
        (ECONNREFUSED, "ECONNREFUSED"), (EPERM, "EPERM"), (ENOSYS, "ENOSYS"), (ENOMEM, "ENOMEM"),
        (ECANCELED, "ECANCELED"), (ENOBUFS, "ENOBUFS"), (EHWPOISON, "errno \(EHWPOISON)"),
    ])
    func description(code: Int32, name: String) {
        let error = RingError("io_uring_setup", errno: code)
        #expect(error.errno == code)
        #expect(error.description.hasPrefix("io_uring_setup: "))
        #expect(error.description.contains(name), "\(error.description)")
        #expect(error.description.contains(String(cString: strerror(code))))
    }

    @Test("a negated errno is stored positive; equal errors compare equal")
    func negated() {
        let error = RingError("connect", errno: -ECONNRESET)
        #expect(error.errno == ECONNRESET)
        #expect(error == RingError("connect", errno: ECONNRESET))
        #expect(error != RingError("send", errno: ECONNRESET))
        #expect(RingError.describe(errno: EPIPE) == "\(String(cString: strerror(EPIPE))) (EPIPE)")
        #expect(RingError.describe(errno: 4_000).hasSuffix("(errno 4000)"))
    }
}

@Suite("RingTests.RingTimeout")
struct RingTimeoutTests {
    @Test("milliseconds become a kernel timespec", arguments: [(0, 0, 0), (999, 0, 999_000_000),
                                                             (1_500, 1, 500_000_000), (30_000, 30, 0)])
    func timespec(milliseconds: Int, seconds: Int64, nanoseconds: Int64) {
        let timeout = RingTimeout(milliseconds: milliseconds)
        #expect(timeout.milliseconds == milliseconds)
        #expect(timeout.pointer.pointee.tv_sec == seconds)
        #expect(timeout.pointer.pointee.tv_nsec == nanoseconds)
    }
}
