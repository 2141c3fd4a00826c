import Testing
@testable import Duplicator

// A mirror batch's wakeup may come a quarter of --mirror-batch-delay late, so
// that below saturation the worker's next wake for traffic sends the batch
// instead of a timer wake of its own; the sessions count their deadline that
// quarter earlier, so the promise "no byte waits longer than
// --mirror-batch-delay" holds (issue 26).
@Suite struct BatchWakeTests {
    @Test("a batch's wakeup comes its slack after its deadline; a turn's at its deadline; the earlier wins")
    func nextWake() {
        let timers = SessionTimers(capacity: 4, batchSlackUs: 250)
        #expect(timers.nextWakeUs == nil)
        timers.add(session: 0, atUs: 10_000, for: .mirrorBatch)
        #expect(timers.nextWakeUs == 10_250)
        #expect(timers.nextDeadlineUs == 10_000)
        timers.add(session: 1, atUs: 10_100, for: .mirrorTurn)
        #expect(timers.nextWakeUs == 10_100)
        // Due at a wake before the slack ends: the batch fires there (WorkerCore.fireDueTimers).
        #expect(timers.batch.popDue(now: 10_050) == 0)
        #expect(timers.nextWakeUs == 10_100)
        // A reload may lower the slack, never raise it.
        timers.lowerBatchSlack(toUs: 500)
        #expect(timers.batchSlackUs == 250)
        timers.lowerBatchSlack(toUs: 100)
        #expect(timers.batchSlackUs == 100)
        let noSlack = SessionTimers(capacity: 1)
        noSlack.add(session: 0, atUs: 5, for: .mirrorBatch)
        #expect(noSlack.nextWakeUs == 5)
    }

    @Test("sessions count the batch deadline a quarter early: with the slack, no byte waits longer than the delay",
          arguments: [0, 1, 3, 4, 1_000, 100_000])
    func deadlinePlusSlackIsTheDelay(delayUs: Int) throws {
        var config = try Config(listen: Endpoint(parsing: ":0", role: .listen),
                                main: Endpoint(parsing: "127.0.0.1:8081", role: .connect), mirrors: [])
        config.mirrorBatchDelayUs = delayUs
        #expect(config.mirrorBatchWakeSlackUs == delayUs / 4)
        #expect(config.limits.mirrorBatchDelayUs + config.mirrorBatchWakeSlackUs == delayUs)
        #expect(config.limits.mirrorBatchDelayUs >= 0)
    }
}
