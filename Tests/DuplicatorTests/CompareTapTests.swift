import Testing
import TestSupport
@testable import Duplicator

/// The session's comparisons alone (`CompareTap`, `RecordingTap`): main's
/// bytes go to every mirror's comparison, a mirror's to its own; the dump
/// of a pair whose replies differ. `CompareSessionTests` and `DumpTests`
/// drive the same through a session.
@Suite("CompareTap")
struct CompareTapTests {
    private static func bytes(_ text: String, _ body: (UnsafeRawBufferPointer) -> Void) {
        TestBytes.text(text).withUnsafeBytes(body)
    }

    @Test("main's replies reach every mirror's comparison, a mirror's only its own")
    func mainToEveryMirror() {
        let windows = UnsafeMutableRawPointer.allocate(byteCount: 2 * 64, alignment: 8)
        defer { windows.deallocate() }
        let tap = CompareTap(windows: windows, windowBytes: 64, mirrorCount: 2)
        defer { tap.deallocate() }
        tap.reset(mirrors: 2, comparing: true)
        Self.bytes("VALUE 1") { tap.mainReplied($0, mirrors: 2) }
        Self.bytes("VALUE 1") { tap.mirrorReplied(0, $0) }
        Self.bytes("VALUE 2") { tap.mirrorReplied(1, $0) }
        #expect(tap.isOpen(0) && !tap.isOpen(1))
        #expect(tap[1].verdict == .diverged && tap[1].divergenceOffset == 6)
        tap.mainEnded(mirrors: 2)
        tap.mirrorEnded(0)
        #expect(tap[0].verdict == .match)
    }

    @Test("an abandoned pair is incomplete; a reset opens every pair again")
    func abandonAndReset() {
        let windows = UnsafeMutableRawPointer.allocate(byteCount: 2 * 64, alignment: 8)
        defer { windows.deallocate() }
        let tap = CompareTap(windows: windows, windowBytes: 64, mirrorCount: 2)
        defer { tap.deallocate() }
        tap.reset(mirrors: 2, comparing: true)
        tap.abandon(0)
        #expect(tap[0].verdict == .incomplete && !tap.isOpen(0) && tap.isOpen(1))
        #expect(tap.anyOpen(mirrors: 2) && !tap.anyOpen(mirrors: 1))
        tap.abandonAll(mirrors: 2)
        #expect(!tap.anyOpen(mirrors: 2))
        tap.reset(mirrors: 2, comparing: true)
        #expect(tap.isOpen(0) && tap.isOpen(1))
    }

    @Test("a session that does not compare (a reload switched --compare off) keeps no pair open; the next may again")
    func switchedOff() {
        let windows = UnsafeMutableRawPointer.allocate(byteCount: 2 * 64, alignment: 8)
        defer { windows.deallocate() }
        let tap = CompareTap(windows: windows, windowBytes: 64, mirrorCount: 2)
        defer { tap.deallocate() }
        tap.reset(mirrors: 2, comparing: false)
        #expect(!tap.comparing && !tap.anyOpen(mirrors: 2))
        tap.reset(mirrors: 2, comparing: true)
        #expect(tap.comparing && tap.isOpen(0) && tap.isOpen(1))
    }

    @Test("a recording keeps its bound per stream, and dumps only pairs whose replies differ")
    func recordingDumps() {
        var tap = RecordingTap(mirrorCount: 1, bytesMax: 4)
        tap.reset(nowUs: 100)
        Self.bytes("hello") { tap.append(.client, $0, nowUs: 101) }
        #expect(tap.recording.streams[Leg.client.index].bytes == TestBytes.text("hell"))
        #expect(tap.wants(.mirror(0)))
        Self.bytes("abcd") { tap.append(.mirror(0), $0, nowUs: 102) }
        #expect(!tap.wants(.mirror(0)), "full")
        let window = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { window.deallocate() }
        var comparison = ReplyComparison(window: window, windowBytes: 64)
        #expect(tap.dump(mirror: 0, comparison, endUs: 200) == nil, "undecided: incomplete, no dump")
        Self.bytes("ab") { comparison.append(.main, $0) }
        Self.bytes("ac") { comparison.append(.mirror, $0) }
        let dump = tap.dump(mirror: 0, comparison, endUs: 200)
        #expect(dump?.verdict == .diverged && dump?.divergenceOffset == 1)
        #expect(dump?.startUs == 100 && dump?.endUs == 200)
        #expect(dump?.client.bytes == TestBytes.text("hell") && dump?.mirrorReplies.bytes == TestBytes.text("abcd"))
        tap.reset(nowUs: 300)
        #expect(tap.recording.streams.allSatisfy { $0.bytes.isEmpty })
    }
}
