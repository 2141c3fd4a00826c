import Testing
@testable import Duplicator

/// The one queue of deadlines (`DeadlineQueue`) and what is built on it: the
/// sessions' timers (`SessionTimers`) and the epoll backend's connect
/// timeouts (`ConnectDeadlines`). No IO, no clock but the tests'.
@Suite("DeadlineQueue")
struct DeadlineQueueTests {
    @Test("entries come due in the order asked for, none before its deadline")
    func order() {
        let queue = DeadlineQueue<UInt32>(capacity: 4)
        #expect(queue.isEmpty && queue.firstDeadline == nil && queue.popDue(now: .max) == nil)
        queue.append(7, deadline: 100)
        queue.append(8, deadline: 150)
        #expect(queue.firstDeadline == 100 && queue.count == 2)
        #expect(queue.popDue(now: 99) == nil)
        #expect(queue.popDue(now: 100) == 7)
        #expect(queue.popDue(now: 149) == nil)
        #expect(queue.firstDeadline == 150)
        #expect(queue.popDue(now: 1_000) == 8)
        #expect(queue.isEmpty)
    }

    @Test("one asked behind a later deadline comes due with that one, never before its own")
    func behindALaterOne() {
        let queue = DeadlineQueue<UInt32>(capacity: 4)
        queue.append(1, deadline: 200)
        queue.append(2, deadline: 180)
        #expect(queue.popDue(now: 190) == nil, "the first is not due, and the second waits behind it")
        #expect(queue.popDue(now: 200) == 1)
        #expect(queue.popDue(now: 200) == 2)
    }

    @Test("a fixed queue refuses when full and wraps around its memory")
    func fixedCapacity() {
        let queue = DeadlineQueue<UInt32>(capacity: 2)
        #expect(queue.append(1, deadline: 10) && queue.append(2, deadline: 20))
        #expect(!queue.append(3, deadline: 30), "full")
        #expect(queue.popDue(now: 10) == 1)
        #expect(queue.append(4, deadline: 40), "wraps into the freed place")
        #expect(queue.capacity == 2)
        #expect(queue.popDue(now: 100) == 2 && queue.popDue(now: 100) == 4 && queue.isEmpty)
    }

    @Test("a growing queue doubles when full and keeps its order across the wrap")
    func grows() {
        let queue = DeadlineQueue<UInt32>(capacity: 2, grows: true)
        queue.append(1, deadline: 10)
        queue.append(2, deadline: 20)
        #expect(queue.popDue(now: 10) == 1)
        queue.append(3, deadline: 30)  // wraps: head at 1
        #expect(queue.append(4, deadline: 40), "grows instead of refusing")
        #expect(queue.capacity == 4 && queue.count == 3)
        var popped: [UInt32] = []
        while let next = queue.popDue(now: 100) { popped.append(next) }
        #expect(popped == [2, 3, 4])
    }

    @Test("the sessions' timers: one queue per timer, the earliest of both is next")
    func sessionTimers() {
        let timers = SessionTimers(capacity: 4)
        #expect(timers.isEmpty && timers.nextDeadlineUs == nil)
        timers.add(session: 3, atUs: 500, for: .mirrorTurn)
        timers.add(session: 1, atUs: 700, for: .mirrorBatch)
        #expect(timers.nextDeadlineUs == 500)
        #expect(timers.batch.popDue(now: 600) == nil && timers.turn.popDue(now: 600) == 3)
        #expect(timers.nextDeadlineUs == 700)
        #expect(timers.batch.popDue(now: 700) == 1 && timers.isEmpty)
    }

    @Test("connect deadlines of two durations come due in deadline order")
    func connectDeadlines() {
        var deadlines = ConnectDeadlines()
        #expect(deadlines.isEmpty && deadlines.nextDeadlineMs == nil)
        deadlines.add(fd: 5, serial: 1, deadlineMs: 10_100, timeoutMs: 10_000)
        deadlines.add(fd: 6, serial: 2, deadlineMs: 600, timeoutMs: 500)
        deadlines.add(fd: 7, serial: 3, deadlineMs: 700, timeoutMs: 500)
        #expect(deadlines.nextDeadlineMs == 600)
        #expect(deadlines.popDue(nowMs: 599) == nil)
        #expect(deadlines.popDue(nowMs: 650).map { [$0.fd, Int32($0.serial)] } == [6, 2])
        #expect(deadlines.popDue(nowMs: 650) == nil)
        #expect(deadlines.nextDeadlineMs == 700)
        #expect(deadlines.popDue(nowMs: 20_000).map { [$0.fd, Int32($0.serial)] } == [7, 3])
        #expect(deadlines.popDue(nowMs: 20_000).map { [$0.fd, Int32($0.serial)] } == [5, 1])
        #expect(deadlines.isEmpty)
    }

    /// Under steady load some connects are always pending, so a queue is
    /// never empty: its storage must still stay near what is pending.
    @Test("connect deadlines under steady load keep bounded storage")
    func connectDeadlinesStayBounded() {
        var deadlines = ConnectDeadlines()
        var nowMs: UInt64 = 0
        for serial in 0..<100_000 {
            nowMs += 1
            deadlines.add(fd: Int32(serial % 1000), serial: UInt32(serial), deadlineMs: nowMs + 100, timeoutMs: 100)
            while deadlines.popDue(nowMs: nowMs) != nil {}
        }
        // 100 pending at any time.
        #expect(deadlines.storedCount <= 300, "\(deadlines.storedCount) entries stored for 100 pending")
        #expect(deadlines.nextDeadlineMs == nowMs - 99 + 100)
    }
}
