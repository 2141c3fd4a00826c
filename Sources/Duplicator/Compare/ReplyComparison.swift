import Glibc

/// Whether a mirror's reply stream equals main's, for one session: the
/// bytes of each are compared as they arrive, however TCP split them.
///
/// Only what the leading stream is ahead is kept, in a fixed window; bytes
/// both streams have are compared and forgotten. The window is a ring of
/// bytes (seven eighths) and a ring of block digests (the rest): while the
/// lead fits in the bytes, every byte is compared and a divergence's offset
/// is exact; past that, the leader's further bytes are kept only as digests
/// of `blockBytes` blocks (`BlockHash`), which the other stream's blocks are
/// checked against, so a lead up to `blockBytes` per 8 bytes of digests
/// (4 MiB for the default 64 KiB window) is still compared, a divergence
/// found there being placed at the start of its block. A lead beyond both,
/// or a stream that ends inside a digested block, cannot be decided:
/// `incomplete`. A verdict is decided as soon as it is certain (a
/// difference, or one stream past the other's end) and then nothing more is
/// kept or compared.
///
/// A value type over memory its owner provides (`window`), so that the
/// session table can lay out every pair's window at start; no allocation.
public struct ReplyComparison {
    public enum Verdict: Int, Sendable, CaseIterable {
        case match, diverged, shorter, longer, incomplete

        /// The metric label.
        public var label: String {
            switch self {
            case .match: "match"
            case .diverged: "diverged"
            case .shorter: "shorter"
            case .longer: "longer"
            case .incomplete: "incomplete"
            }
        }
    }

    public enum Stream: Sendable { case main, mirror }

    /// The block a digest covers.
    public static let blockBytes = 4096
    /// The block of this comparison (a multiple of 8; smaller in tests).
    public let blockBytes: Int

    private let window: UnsafeMutableRawPointer
    public let windowBytes: Int
    /// The leader's bytes kept verbatim, at most.
    public let keptBytesMax: Int
    private let digests: UnsafeMutableRawPointer
    private let digestCapacity: Int

    /// Where the kept bytes begin in the ring, and how many there are: the
    /// leader's bytes from the lagger's position on (up to `spillStart` when spilling).
    private var start = 0
    public private(set) var keptBytes = 0
    /// The stream whose bytes are kept (meaningful while it is ahead).
    private var ahead = Stream.main
    /// Bytes both streams have, and that are equal (the lagger's position).
    public private(set) var matchedBytes: UInt64 = 0
    private var mainEnded = false
    private var mirrorEnded = false
    public private(set) var decided: Verdict?
    /// With `diverged`: the offset of the first byte that differs, or the
    /// start of its block when it was found by digest (`divergenceIsExact` false).
    public private(set) var divergenceOffset: UInt64 = 0
    public private(set) var divergenceIsExact = true

    // The spill: the leader's bytes past the kept ones, as digests.
    private var spilling = false
    private var digestHead = 0
    private var digestCount = 0
    private var leaderHash = BlockHash()
    private var leaderPartialBytes = 0
    private var laggerHash = BlockHash()
    private var laggerPartialBytes = 0

    /// A block's digest, taken 8 bytes at a time (bytes carried over
    /// between appends), so that it does not depend on how TCP split the
    /// stream. Each word goes through a multiply and a shift, both
    /// bijections: two blocks that differ in one word never collide.
    struct BlockHash: Equatable {
        private var hash: UInt64 = 0x243F_6A88_85A3_08D3
        private var word: UInt64 = 0
        private var wordBytes = 0

        @inline(__always)
        private mutating func mix(_ value: UInt64) {
            hash = (hash ^ value) &* 0x9E37_79B9_7F4A_7C15
            hash ^= hash >> 32
        }

        mutating func add(_ source: UnsafeRawPointer, _ count: Int) {
            var index = 0
            while wordBytes != 0 && index < count {
                word |= UInt64(source.load(fromByteOffset: index, as: UInt8.self)) << (8 * UInt64(wordBytes))
                wordBytes += 1
                index += 1
                if wordBytes == 8 {
                    mix(word)
                    word = 0
                    wordBytes = 0
                }
            }
            while count - index >= 8 {
                mix(UInt64(littleEndian: source.loadUnaligned(fromByteOffset: index, as: UInt64.self)))
                index += 8
            }
            while index < count {
                word |= UInt64(source.load(fromByteOffset: index, as: UInt8.self)) << (8 * UInt64(wordBytes))
                wordBytes += 1
                index += 1
            }
        }

        /// The digest of a whole block (a multiple of 8 bytes).
        var digest: UInt64 { hash }
    }

    /// - Parameter blockBytes: what a digest covers; windows smaller than
    ///   four blocks keep bytes only.
    public init(window: UnsafeMutableRawPointer, windowBytes: Int, blockBytes: Int = Self.blockBytes) {
        precondition(windowBytes > 0 && blockBytes > 0 && blockBytes % 8 == 0)
        self.window = window
        self.windowBytes = windowBytes
        self.blockBytes = blockBytes
        if windowBytes >= 4 * blockBytes && windowBytes >= 64 {
            let digestBytes = windowBytes / 8 / 8 * 8
            digestCapacity = digestBytes / 8
            keptBytesMax = windowBytes - digestBytes
        } else {
            digestCapacity = 0
            keptBytesMax = windowBytes
        }
        digests = window + keptBytesMax
    }

    /// Forgets everything: a new session.
    public mutating func reset() {
        start = 0
        keptBytes = 0
        matchedBytes = 0
        mainEnded = false
        mirrorEnded = false
        decided = nil
        divergenceOffset = 0
        divergenceIsExact = true
        endSpill()
    }

    /// The verdict once both streams are over (or will never be compared
    /// further): a decided one, or what their ends say; `incomplete` when a
    /// stream did not end.
    public var verdict: Verdict {
        if let decided { return decided }
        guard mainEnded && mirrorEnded, !spilling else { return .incomplete }
        if keptBytes == 0 { return .match }
        return ahead == .main ? .shorter : .longer
    }

    /// Whether the mirror's next receive (up to `count` bytes) should wait
    /// for main: the mirror already leads by so much that those bytes would
    /// spill past the verbatim window into block digests, where main's
    /// stream ending inside a block could not be decided (`incomplete`).
    /// Main's replies are paced by its client, the mirror's are read as
    /// they come; a mirror reading ahead spilled or not by how the threads
    /// happened to run (a busy dump writer was enough: issue 27). Holding
    /// the mirror's replies in its socket meanwhile costs the client
    /// nothing, and keeps its verdict exact. Main is never held back: its
    /// lead over a slow mirror is what the digests are for. A receive as
    /// large as the verbatim window (a tiny `--compare-window`) cannot be
    /// kept from spilling by waiting, so it is not held.
    public func mirrorShouldWait(forBytes count: Int) -> Bool {
        guard decided == nil, ahead == .mirror else { return false }
        return spilling || (keptBytes > 0 && count < keptBytesMax && keptBytes + count > keptBytesMax)
    }

    /// Still taking bytes (no verdict decided yet).
    @inline(__always)
    public var isOpen: Bool { decided == nil }

    /// The pair cannot be compared (the mirror was cut, failed, or its
    /// replies could not be read): `incomplete`, unless already decided.
    public mutating func abandon() {
        if decided == nil { decide(.incomplete) }
    }

    /// `stream` sent EOF: its reply is over.
    public mutating func end(_ stream: Stream) {
        guard decided == nil else { return }
        switch stream {
        case .main: mainEnded = true
        case .mirror: mirrorEnded = true
        }
        let isLagging = (keptBytes > 0 || spilling) && ahead != stream
        guard isLagging else { return }
        // The other stream already has bytes past this end. Within the
        // kept bytes, or at a block boundary of the spill, every byte of
        // this one was checked: it is a strict prefix. Inside a digested
        // block it was not.
        if keptBytes > 0 || laggerPartialBytes == 0 {
            decide(Self.past(ahead))
        } else {
            decide(.incomplete)
        }
    }

    /// Bytes of `stream`, in order.
    public mutating func append(_ stream: Stream, _ bytes: UnsafeRawBufferPointer) {
        guard decided == nil, var source = bytes.baseAddress else { return }
        var count = bytes.count
        if (keptBytes > 0 || spilling) && ahead != stream {
            // The other stream is ahead: compare with the bytes it left.
            let compared = min(count, keptBytes)
            if compared > 0 {
                if let difference = firstDifference(source, compared) {
                    divergenceOffset = matchedBytes + UInt64(difference)
                    decide(.diverged)
                    return
                }
                matchedBytes += UInt64(compared)
                keptBytes -= compared
                start = keptBytes == 0 ? 0 : (start + compared) % keptBytesMax
                source += compared
                count -= compared
            }
            if spilling && keptBytes == 0 && count > 0 {
                let used = checkAgainstDigests(source, count)
                guard decided == nil else { return }
                source += used
                count -= used
            }
            if count == 0 { return }
        }
        if spilling {
            // Still the leader, past the kept bytes: digests only.
            spill(source, count)
            return
        }
        // `stream` is now ahead, or level: keep its bytes for the other.
        let otherEnded = stream == .main ? mirrorEnded : mainEnded
        if otherEnded {
            decide(Self.past(stream))
            return
        }
        ahead = stream
        let fits = min(count, keptBytesMax - keptBytes)
        var end = (start + keptBytes) % keptBytesMax
        keptBytes += fits
        var left = fits
        while left > 0 {
            let piece = min(left, keptBytesMax - end)
            (window + end).copyMemory(from: source, byteCount: piece)
            source += piece
            left -= piece
            end = 0
        }
        count -= fits
        guard count > 0 else { return }
        guard digestCapacity > 0 else {
            decide(.incomplete)
            return
        }
        spilling = true
        spill(source, count)
    }

    /// The leader's bytes past the kept ones: hashed into blocks.
    private mutating func spill(_ source: UnsafeRawPointer, _ count: Int) {
        var done = 0
        while done < count {
            let piece = min(count - done, blockBytes - leaderPartialBytes)
            leaderHash.add(source + done, piece)
            leaderPartialBytes += piece
            done += piece
            if leaderPartialBytes == blockBytes {
                guard digestCount < digestCapacity else {
                    decide(.incomplete)
                    return
                }
                digests.storeBytes(of: leaderHash.digest, toByteOffset: 8 * ((digestHead + digestCount) % digestCapacity),
                                   as: UInt64.self)
                digestCount += 1
                leaderHash = BlockHash()
                leaderPartialBytes = 0
            }
        }
    }

    /// The lagger's bytes in the spill: each block is checked against the
    /// leader's digest; on reaching the leader's position the partial
    /// blocks are compared and the streams are level again. Returns the
    /// bytes used (the rest are past the leader).
    private mutating func checkAgainstDigests(_ source: UnsafeRawPointer, _ count: Int) -> Int {
        var done = 0
        while done < count {
            let blockEnd = digestCount > 0 ? blockBytes : leaderPartialBytes
            let piece = min(count - done, blockEnd - laggerPartialBytes)
            laggerHash.add(source + done, piece)
            laggerPartialBytes += piece
            matchedBytes += UInt64(piece)
            done += piece
            guard laggerPartialBytes == blockEnd else { continue }
            // A whole block against its digest, or the same part of the leader's current block.
            let same = digestCount > 0
                ? laggerHash.digest == digests.loadUnaligned(fromByteOffset: 8 * digestHead, as: UInt64.self)
                : laggerHash == leaderHash
            guard same else {
                divergenceOffset = matchedBytes - UInt64(laggerPartialBytes)
                divergenceIsExact = false
                decide(.diverged)
                return done
            }
            if digestCount > 0 {
                digestHead = (digestHead + 1) % digestCapacity
                digestCount -= 1
                laggerHash = BlockHash()
                laggerPartialBytes = 0
                if digestCount == 0 && leaderPartialBytes == 0 {
                    // Level with the leader at a block boundary.
                    endSpill()
                    return done
                }
            } else {
                // Level with the leader: back to comparing bytes.
                endSpill()
                return done
            }
        }
        return done
    }

    private mutating func endSpill() {
        spilling = false
        digestHead = 0
        digestCount = 0
        leaderHash = BlockHash()
        leaderPartialBytes = 0
        laggerHash = BlockHash()
        laggerPartialBytes = 0
    }

    /// `stream` has bytes past the other's end.
    private static func past(_ stream: Stream) -> Verdict { stream == .mirror ? .longer : .shorter }

    private mutating func decide(_ verdict: Verdict) {
        decided = verdict
        keptBytes = 0
        start = 0
        endSpill()
    }

    /// The index of the first of `count` bytes at `source` that differs
    /// from the kept bytes, or nil.
    private func firstDifference(_ source: UnsafeRawPointer, _ count: Int) -> Int? {
        var done = 0
        var position = start
        while done < count {
            let piece = min(count - done, keptBytesMax - position)
            if memcmp(window + position, source + done, piece) != 0 {
                let kept = UnsafeRawBufferPointer(start: window + position, count: piece)
                let given = UnsafeRawBufferPointer(start: source + done, count: piece)
                for index in 0..<piece where kept[index] != given[index] { return done + index }
            }
            done += piece
            position = 0
        }
        return nil
    }
}
