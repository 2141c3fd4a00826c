import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// Deterministic tests of the session state machine, driven through
// `FakeSessionIO` (see that file). Every byte stream is compared exactly.
// The suite's tests are in extensions of `SessionTests`, a file a topic:
// SessionDataPathTests, SessionMirrorTests, SessionFailureTests and
// SessionRandomizedTests; the fake's own checks in FakeChecksTests.

func testLimits(mirrors: Int = 2, backlogBytesMax: Int = 1 << 20, backlogChunksMax: Int = 16,
                        readAheadChunks: Int = 2, lingerMs: Int = 2_000, idleTimeoutMs: Int = 0,
                        failuresBeforeBackoff: Int = 3) -> SessionLimits {
    SessionLimits(mirrorCount: mirrors, mainConnectTimeoutMs: 1_000, mirrorConnectTimeoutMs: 500,
                  backlogBytesMax: backlogBytesMax, backlogChunksMax: backlogChunksMax,
                  readAheadChunks: readAheadChunks, mirrorLingerMs: lingerMs, idleTimeoutMs: idleTimeoutMs,
                  mirrorFailuresBeforeBackoff: failuresBeforeBackoff,
                  mirrorBackoffInitialMs: 250, mirrorBackoffMaxMs: 30_000,
                  mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
}

/// Plays out whatever is left of the current sessions with healthy peers
/// (no partial sends, no races) and expects them all to end.
func finish(_ io: FakeSessionIO, seed: UInt64 = 1, sourceLocation: SourceLocation = #_sourceLocation) {
    let simulation = Simulation(io: io, seed: seed)
    simulation.partialSends = false
    simulation.raceCancels = false
    simulation.eofWithBuffer = false
    let done = simulation.run()
    #expect(done, "sessions did not end; pending: \(io.pending)", sourceLocation: sourceLocation)
}
@Suite("SessionTests")
struct SessionTests {}
