import Glibc
import Ring
import Testing
import TestSupport
@testable import Duplicator

// The small helpers and types `FakeSessionIO` and its tests share: test bytes,
// which session, which operation, what a descriptor saw, how a session ended.

extension RandomNumberGenerator {
    mutating func chance(_ numerator: Int, in denominator: Int) -> Bool {
        Int.random(in: 0..<denominator, using: &self) < numerator
    }
}

enum TestBytes {
    /// `count` bytes that differ from any other call's with another `seed`.
    static func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SeededGenerator(seed: seed &* 0x2545_F491_4F6C_DD1D &+ 7)
        return random(count, using: &generator)
    }

    static func random(_ count: Int, using generator: inout some RandomNumberGenerator) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var word: UInt64 = 0
        for index in bytes.indices {
            if index % 8 == 0 { word = generator.next() }
            bytes[index] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(index % 8)))
        }
        return bytes
    }

    static func text(_ string: String) -> [UInt8] { Array(string.utf8) }
}

extension Array where Element == UInt8 {
    func isPrefix(of other: [UInt8]) -> Bool { count <= other.count && self[...] == other[..<count] }
}

/// A leg of a session as the tests name it (leg 0: client, 1: main, 2...: mirrors).
/// A session's index in its table and its generation: one client connection.
struct SessionKey: Hashable, CustomStringConvertible, Sendable {
    let index: UInt32
    let generation: UInt16
    init(index: UInt32, generation: UInt16) {
        self.index = index
        self.generation = generation
    }
    init(_ session: Session) { self.init(index: session.index, generation: session.generation) }
    init(_ tag: CompletionTag) { self.init(index: tag.session, generation: tag.generation) }
    var description: String { "session(\(index)#\(generation))" }
}

/// One operation a session asked for.
struct FakeOp: CustomStringConvertible {
    let id: Int
    let kind: OperationKind
    let fd: Int32
    let tag: CompletionTag
    var slot: UInt32 = 0
    var offset = 0
    var length = 0
    /// For a send: the bytes the slot held when the send was asked for.
    var bytes: [UInt8] = []
    /// A send from the session's own memory (its PROXY protocol header), not from a slot.
    var fromSessionMemory = false
    var memory: UnsafeRawPointer?
    /// For a gathered send: every (slot, offset, length) it reads, in order
    /// (`slot`, `offset` are the first's; `length` and `bytes` cover all).
    var segments: [(slot: UInt32, offset: Int, length: Int)] = []
    /// For a connect: the leg whose address it connects to.
    var connectLeg: Leg?
    var timeoutMs = 0
    var timeoutTag = CompletionTag(rawValue: 0)

    var peer: Leg { Leg(tag) }
    var key: SessionKey { SessionKey(tag) }

    var description: String {
        var text = "#\(id) \(kind) fd \(fd) \(peer) \(key)"
        if kind == .send { text += " slot \(slot) offset \(offset) length \(length)" }
        if segments.count > 1 { text += " gathered over \(segments.count) chunks" }
        return text
    }
}

/// What the fake knows about one descriptor.
struct FDRecord {
    let fd: Int32
    let leg: Leg
    let key: SessionKey
    var connectRequested = false
    var connected = false
    var cancelRequested = false
    var closeCount = 0
    var shutdownRequested = 0
    var shutdownCompleted = false
    /// Every byte this descriptor's peer accepted, in order.
    var sent: [UInt8] = []
    var sendCompletions = 0
    var discardCompletions = 0
    var earlyEOFDelivered = false
}

/// The state of a session when it became inactive (before its slot is reused).
struct EndedSession {
    let key: SessionKey
    let cause: Session.EndCause?
    /// Per mirror: whether it lost bytes of this session (cut, failed, skipped).
    let mirrorMissing: [Bool]
    /// Per mirror, with `--compare`: the verdict on its replies (empty without).
    var mirrorVerdicts: [ReplyComparison.Verdict] = []
}
