import Testing
import TestSupport
@testable import Duplicator

// The comparison of a mirror's reply stream with main's, alone: every split
// and interleaving of small streams, seeded random ones of large streams,
// each verdict, and the window's bound.

/// What the verdict must be for two whole streams (an unbounded window).
private func expectedVerdict(main: [UInt8], mirror: [UInt8]) -> (ReplyComparison.Verdict, UInt64) {
    let common = min(main.count, mirror.count)
    for index in 0..<common where main[index] != mirror[index] { return (.diverged, UInt64(index)) }
    if main.count == mirror.count { return (.match, 0) }
    return (main.count > mirror.count ? .shorter : .longer, 0)
}

/// One event of a schedule: a piece of one stream, or its end.
private enum Event {
    case bytes(ReplyComparison.Stream, [UInt8])
    case end(ReplyComparison.Stream)
}

/// Plays `events` into a comparison with a window of `windowBytes`; returns
/// its verdict and the most one stream was ahead of the other.
private func play(_ events: [Event], windowBytes: Int) -> (ReplyComparison.Verdict, UInt64, Int) {
    let (verdict, offset, lead, _) = playDetailed(events, windowBytes: windowBytes)
    return (verdict, offset, lead)
}

/// `play`, also giving the comparison as it ended (what it kept verbatim at most, whether the offset is exact).
private func playDetailed(_ events: [Event], windowBytes: Int,
                          blockBytes: Int = ReplyComparison.blockBytes) -> (ReplyComparison.Verdict, UInt64, Int, ReplyComparison) {
    let window = UnsafeMutableRawPointer.allocate(byteCount: windowBytes, alignment: 16)
    defer { window.deallocate() }
    var comparison = ReplyComparison(window: window, windowBytes: windowBytes, blockBytes: blockBytes)
    var mainBytes = 0
    var mirrorBytes = 0
    var lead = 0
    for event in events {
        switch event {
        case .bytes(let stream, let bytes):
            bytes.withUnsafeBytes { comparison.append(stream, $0) }
            if stream == .main { mainBytes += bytes.count } else { mirrorBytes += bytes.count }
            lead = max(lead, abs(mainBytes - mirrorBytes))
        case .end(let stream):
            comparison.end(stream)
        }
        #expect(comparison.keptBytes <= comparison.keptBytesMax && comparison.keptBytesMax <= windowBytes)
    }
    return (comparison.verdict, comparison.divergenceOffset, lead, comparison)
}

/// Every way to cut `count` bytes into non-empty pieces (as lengths).
private func splits(_ count: Int) -> [[Int]] {
    guard count > 0 else { return [[]] }
    var result: [[Int]] = []
    for first in 1...count {
        for rest in splits(count - first) { result.append([first] + rest) }
    }
    return result
}

/// Every interleaving of two sequences, each kept in its order.
private func interleavings<T>(_ a: [T], _ b: [T]) -> [[T]] {
    if a.isEmpty { return [b] }
    if b.isEmpty { return [a] }
    return interleavings(Array(a.dropFirst()), b).map { [a[0]] + $0 }
        + interleavings(a, Array(b.dropFirst())).map { [b[0]] + $0 }
}

private func pieces(_ bytes: [UInt8], _ lengths: [Int], _ stream: ReplyComparison.Stream) -> [Event] {
    var offset = 0
    var events: [Event] = []
    for length in lengths {
        events.append(.bytes(stream, Array(bytes[offset..<offset + length])))
        offset += length
    }
    events.append(.end(stream))
    return events
}

/// Seeded random pieces of up to `pieceMax` bytes, then the end.
private func randomPieces(_ bytes: [UInt8], _ stream: ReplyComparison.Stream, pieceMax: Int,
                          _ generator: inout SeededGenerator) -> [Event] {
    var offset = 0
    var events: [Event] = []
    while offset < bytes.count {
        let length = Int.random(in: 1...min(pieceMax, bytes.count - offset), using: &generator)
        events.append(.bytes(stream, Array(bytes[offset..<offset + length])))
        offset += length
    }
    events.append(.end(stream))
    return events
}

private func randomInterleaving(_ a: [Event], _ b: [Event], _ generator: inout SeededGenerator) -> [Event] {
    var result: [Event] = []
    var (i, j) = (0, 0)
    while i < a.count || j < b.count {
        if j == b.count || (i < a.count && Bool.random(using: &generator)) {
            result.append(a[i]); i += 1
        } else {
            result.append(b[j]); j += 1
        }
    }
    return result
}

@Suite("ReplyComparisonTests")
struct ReplyComparisonTests {
    @Test("each verdict, at the offset where the streams part")
    func verdicts() {
        let cases: [([UInt8], [UInt8], ReplyComparison.Verdict, UInt64)] = [
            (Array("+OK\r\n".utf8), Array("+OK\r\n".utf8), .match, 0),
            ([], [], .match, 0),
            (Array("$3\r\nfoo\r\n".utf8), Array("$3\r\nbar\r\n".utf8), .diverged, 4),
            (Array("abc".utf8), Array("xbc".utf8), .diverged, 0),
            (Array("hello world".utf8), Array("hello".utf8), .shorter, 0),
            (Array("hello".utf8), [], .shorter, 0),
            (Array("hello".utf8), Array("hello world".utf8), .longer, 0),
            ([], Array("x".utf8), .longer, 0),
        ]
        for (main, mirror, verdict, offset) in cases {
            let mainEvents = pieces(main, main.isEmpty ? [] : [main.count], .main)
            let mirrorEvents = pieces(mirror, mirror.isEmpty ? [] : [mirror.count], .mirror)
            // Main first, the mirror first, and both streams' bytes before either ends.
            let orders = [mainEvents + mirrorEvents, mirrorEvents + mainEvents,
                          Array(mainEvents.dropLast()) + Array(mirrorEvents.dropLast()) + [.end(.mirror), .end(.main)]]
            for (order, events) in orders.enumerated() {
                let (got, gotOffset, _) = play(events, windowBytes: 64)
                #expect(got == verdict, "\(main) vs \(mirror), order \(order)")
                if verdict == .diverged { #expect(gotOffset == offset, "\(main) vs \(mirror), order \(order)") }
            }
        }
    }

    @Test("a stream that does not end is incomplete; so is a pair given up")
    func incomplete() {
        let bytes = Array("same".utf8)
        #expect(play([.bytes(.main, bytes), .bytes(.mirror, bytes), .end(.main)], windowBytes: 16).0 == .incomplete)
        #expect(play([.bytes(.main, bytes), .bytes(.mirror, bytes), .end(.mirror)], windowBytes: 16).0 == .incomplete)
        let window = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
        defer { window.deallocate() }
        var comparison = ReplyComparison(window: window, windowBytes: 16)
        bytes.withUnsafeBytes { comparison.append(.main, $0) }
        comparison.abandon()
        bytes.withUnsafeBytes { comparison.append(.mirror, $0) }
        comparison.end(.main)
        comparison.end(.mirror)
        #expect(comparison.verdict == .incomplete)
        // A verdict decided stays: giving up after a divergence does not hide it.
        comparison.reset()
        Array("ab".utf8).withUnsafeBytes { comparison.append(.main, $0) }
        Array("ax".utf8).withUnsafeBytes { comparison.append(.mirror, $0) }
        comparison.abandon()
        #expect(comparison.verdict == .diverged && comparison.divergenceOffset == 1)
    }

    @Test("one stream more than the window ahead is incomplete, never a mismatch")
    func windowBound() {
        let bytes = [UInt8](repeating: 7, count: 100)
        let events = pieces(bytes, [60, 40], .main) + pieces(bytes, [100], .mirror)
        #expect(play(events, windowBytes: 64).0 == .incomplete)
        #expect(play(events, windowBytes: 100).0 == .match)
    }

    /// Streams of up to 3 bytes over {a, b}: every pair, every split of each,
    /// every interleaving of the two (ends included), in windows of 1, 2 and
    /// 16 bytes. The verdict is the whole streams' whenever no stream ran
    /// more than the window ahead, and otherwise that or `incomplete`.
    @Test("every split and interleaving of small streams")
    func exhaustive() {
        var strings: [[UInt8]] = [[]]
        for length in 1...3 {
            var next: [[UInt8]] = []
            for prefix in strings where prefix.count == length - 1 {
                next.append(prefix + [0x61])
                next.append(prefix + [0x62])
            }
            strings += next
        }
        var runs = 0
        for main in strings {
            for mirror in strings {
                let (verdict, offset) = expectedVerdict(main: main, mirror: mirror)
                for mainSplit in splits(main.count) {
                    for mirrorSplit in splits(mirror.count) {
                        let schedules = interleavings(pieces(main, mainSplit, .main), pieces(mirror, mirrorSplit, .mirror))
                        for schedule in schedules {
                            for windowBytes in [1, 2, 16] {
                                runs += 1
                                let (got, gotOffset, lead) = play(schedule, windowBytes: windowBytes)
                                if lead <= windowBytes {
                                    #expect(got == verdict, "\(main) vs \(mirror), window \(windowBytes)")
                                    if verdict == .diverged { #expect(gotOffset == offset) }
                                } else {
                                    #expect(got == verdict || got == .incomplete)
                                }
                            }
                        }
                    }
                }
            }
        }
        #expect(runs > 100_000)
    }

    /// One stream all first, then the other: a lead of up to 3 MB, past the
    /// 56 KiB kept verbatim of a 64 KiB window, decided through the digests:
    /// equal streams match, a flipped byte diverges in its 4 KiB block, a
    /// mirror cut at a block boundary is shorter, one with bytes added is
    /// longer (when main led); a lagging stream that ends inside a digested
    /// block cannot be decided (incomplete).
    @Test("a lead past the kept bytes is compared by block digests", arguments: [false, true])
    func spill(mirrorFirst: Bool) {
        var generator = SeededGenerator(seed: mirrorFirst ? 77 : 78)
        let main = TestBytes.random(3_000_000, using: &generator)
        var flipped = main
        flipped[2_000_123] ^= 0x40
        var early = main
        early[100] ^= 1
        let blockCut = Array(main[..<(57_344 + 300 * 4096)])
        let cases: [([UInt8], ReplyComparison.Verdict)] = [
            (main, .match),
            (flipped, .diverged),
            (early, .diverged),
            (main + [1, 2, 3], .longer),
            (mirrorFirst ? main : blockCut, mirrorFirst ? .match : .shorter),
            (Array(main[..<1_000_001]), .incomplete),
        ]
        for (index, (mirror, expected)) in cases.enumerated() {
            let mainEvents = randomPieces(main, .main, pieceMax: 16384, &generator)
            let mirrorEvents = randomPieces(mirror, .mirror, pieceMax: 16384, &generator)
            let events = mirrorFirst ? mirrorEvents + mainEvents : mainEvents + mirrorEvents
            let (got, offset, _, comparison) = playDetailed(events, windowBytes: 65536)
            if mirrorFirst && index == 5 {
                // The mirror led and ended first: main passes its end at once (shorter).
                #expect(got == .shorter, "case \(index)")
                continue
            }
            if mirrorFirst && index == 3 {
                // Main, the shorter, lags and ends inside a digested block of
                // the mirror's: whether it is a prefix cannot be checked.
                #expect(got == .incomplete, "case \(index)")
                continue
            }
            #expect(got == expected, "case \(index), mirror first \(mirrorFirst)")
            if index == 1 {
                #expect(!comparison.divergenceIsExact && offset <= 2_000_123 && 2_000_123 - offset < 4096)
            }
            if index == 2 { #expect(comparison.divergenceIsExact && offset == 100) }
        }
        // Beyond the digests' reach (8 KiB of digests: 4 MiB of lead): incomplete.
        let long = TestBytes.random(5_000_000, using: &generator)
        let events = randomPieces(long, .main, pieceMax: 65536, &generator) + randomPieces(long, .mirror, pieceMax: 65536, &generator)
        #expect(play(events, windowBytes: 65536).0 == .incomplete)
    }

    /// Blocks of 8 to 24 bytes in windows of 64 to 256: streams of a few
    /// hundred bytes go in and out of the digests many times, in random
    /// pieces and interleavings (seeded). Whatever happens, the verdict is
    /// the streams' own or `incomplete`, exact while the lead fit in the
    /// kept bytes, a divergence found by digest within its block; and the
    /// digests do decide pairs that the bytes alone could not.
    @Test("seeded leads in and out of small block digests", arguments: 0..<4)
    func smallBlocks(shard: Int) {
        var decidedPastBytes = 0
        var pastBytes = 0
        for round in 0..<400 {
            var generator = SeededGenerator(seed: UInt64(90_000 + shard * 1000 + round))
            let main = TestBytes.random(Int.random(in: 0...400, using: &generator), using: &generator)
            var mirror = main
            switch Int.random(in: 0..<5, using: &generator) {
            case 1 where !mirror.isEmpty:
                mirror[Int.random(in: 0..<mirror.count, using: &generator)] ^= 0x08
            case 2 where !mirror.isEmpty:
                mirror.removeLast(Int.random(in: 1...mirror.count, using: &generator))
            case 3:
                mirror += TestBytes.random(Int.random(in: 1...40, using: &generator), using: &generator)
            default:
                break
            }
            let (verdict, offset) = expectedVerdict(main: main, mirror: mirror)
            let pieceMax = [1, 5, 30, 120].randomElement(using: &generator)!
            let schedule = randomInterleaving(randomPieces(main, .main, pieceMax: pieceMax, &generator),
                                              randomPieces(mirror, .mirror, pieceMax: pieceMax, &generator), &generator)
            let blockBytes = [8, 16, 24].randomElement(using: &generator)!
            let windowBytes = [64, 100, 256].randomElement(using: &generator)!
            let (got, gotOffset, lead, comparison) = playDetailed(schedule, windowBytes: windowBytes, blockBytes: blockBytes)
            let context = "seed \(90_000 + shard * 1000 + round): \(main.count) vs \(mirror.count), window \(windowBytes), block \(blockBytes): \(got), expected \(verdict)"
            #expect(got == verdict || got == .incomplete, "\(context)")
            if lead <= comparison.keptBytesMax {
                #expect(got == verdict, "\(context)")
            } else {
                pastBytes += 1
                if got == verdict { decidedPastBytes += 1 }
            }
            if got == .diverged {
                #expect(gotOffset <= offset && offset - gotOffset < UInt64(blockBytes), "\(context) at \(gotOffset), not \(offset)")
                if comparison.divergenceIsExact { #expect(gotOffset == offset, "\(context)") }
            }
        }
        #expect(pastBytes > 100, "leads past the kept bytes: \(pastBytes)")
        // With one to four digests the reach is short: about a third are decided (0 without digests).
        #expect(decidedPastBytes * 5 > pastBytes, "decided past the kept bytes: \(decidedPastBytes) of \(pastBytes)")
    }

    @Test("a block's digest does not depend on how its bytes were split, and one changed byte changes it")
    func blockHashSplits() {
        let bytes = TestBytes.random(64, seed: 5)
        func digest(_ cuts: [Int], _ bytes: [UInt8]) -> ReplyComparison.BlockHash {
            var hash = ReplyComparison.BlockHash()
            var offset = 0
            bytes.withUnsafeBytes { raw in
                for cut in cuts + [bytes.count] {
                    hash.add(raw.baseAddress! + offset, cut - offset)
                    offset = cut
                }
            }
            return hash
        }
        let whole = digest([], bytes)
        for first in 0...64 {
            for second in first...64 where second % 7 == 0 || second == first {
                #expect(digest([first, second], bytes) == whole, "cut at \(first), \(second)")
            }
        }
        for index in 0..<64 {
            var changed = bytes
            changed[index] ^= 0x80
            #expect(digest([], changed).digest != whole.digest, "byte \(index)")
        }
    }

    /// Large streams (up to 20 KB) with one change: equal, a byte flipped, cut
    /// short, or bytes added; random pieces, random interleaving (seeded),
    /// windows from 1 byte to larger than either stream.
    @Test("seeded random splits and interleavings of large streams", arguments: 0..<8)
    func seeded(shard: Int) {
        for round in 0..<50 {
            var generator = SeededGenerator(seed: UInt64(shard * 1000 + round))
            let main = TestBytes.random(Int.random(in: 0...20_000, using: &generator), using: &generator)
            var mirror = main
            switch Int.random(in: 0..<4, using: &generator) {
            case 1 where !mirror.isEmpty:
                mirror[Int.random(in: 0..<mirror.count, using: &generator)] ^= 0x20
            case 2 where !mirror.isEmpty:
                mirror.removeLast(Int.random(in: 1...mirror.count, using: &generator))
            case 3:
                mirror += TestBytes.random(Int.random(in: 1...500, using: &generator), using: &generator)
            default:
                break
            }
            let (verdict, offset) = expectedVerdict(main: main, mirror: mirror)
            let pieceMax = [1, 7, 1500, 16384].randomElement(using: &generator)!
            let schedule = randomInterleaving(randomPieces(main, .main, pieceMax: pieceMax, &generator),
                                              randomPieces(mirror, .mirror, pieceMax: pieceMax, &generator), &generator)
            let windowBytes = [1, 100, 4096, 16384, 65536].randomElement(using: &generator)!
            let (got, gotOffset, lead, comparison) = playDetailed(schedule, windowBytes: windowBytes)
            let context = "seed \(shard * 1000 + round): \(main.count) vs \(mirror.count) bytes, window \(windowBytes)"
            if lead <= comparison.keptBytesMax {
                #expect(got == verdict, "\(context)")
                if verdict == .diverged { #expect(gotOffset == offset && comparison.divergenceIsExact, "\(context)") }
            } else {
                // Past the kept bytes: digests, or incomplete; never another verdict.
                #expect(got == verdict || got == .incomplete, "\(context): \(got), expected \(verdict)")
                if got == .diverged {
                    #expect(gotOffset <= offset && offset - gotOffset < UInt64(ReplyComparison.blockBytes), "\(context)")
                    if comparison.divergenceIsExact { #expect(gotOffset == offset, "\(context)") }
                }
            }
        }
    }
}
