import Ring

/// One of a session's connections: the client, main, or a mirror.
///
/// The one name for a leg in the proxy: a session's legs are stored in this
/// order (`rawValue` is the position), its completion tags carry it
/// (`CompletionTag.leg`, converted here so that the Ring module knows nothing
/// of legs), and the IO is told which address to connect a leg to by it
/// (`targetIndex`). A struct over the position rather than an enum with a
/// payload: the hot path indexes by it and compares it, nothing more.
public struct Leg: Hashable, Sendable, CustomStringConvertible {
    /// 0: the client; 1: main; 2...: mirror `rawValue - 2`.
    public let rawValue: UInt8

    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The leg a completion is for.
    @inlinable public init(_ tag: CompletionTag) { rawValue = tag.leg }

    @inlinable public static var client: Leg { Leg(rawValue: 0) }
    @inlinable public static var main: Leg { Leg(rawValue: 1) }
    /// Mirror `index` (in the order of `-m`).
    @inlinable public static func mirror(_ index: Int) -> Leg { Leg(rawValue: UInt8(truncatingIfNeeded: 2 &+ index)) }

    /// How many legs a session has with `mirrorCount` mirrors.
    @inlinable public static func count(mirrors mirrorCount: Int) -> Int { mirror(mirrorCount).index }

    /// Its position among a session's legs.
    @inlinable public var index: Int { Int(rawValue) }
    @inlinable public var isMirror: Bool { rawValue >= 2 }
    /// Which mirror this is (a mirror leg only).
    @inlinable public var mirrorIndex: Int {
        assert(isMirror, "\(self) is not a mirror")
        return Int(rawValue) &- 2
    }
    /// Its address in the table of main's and the mirrors' (0: main,
    /// 1...: mirror `targetIndex - 1`); an upstream leg only.
    @inlinable public var targetIndex: Int {
        assert(self != .client, "the client is not connected to")
        return Int(rawValue) &- 1
    }

    public var description: String {
        switch rawValue {
        case 0: "client"
        case 1: "main"
        default: "mirror\(mirrorIndex)"
        }
    }
}

extension CompletionTag {
    @inlinable
    public init(kind: OperationKind, leg: Leg, generation: UInt16, session: UInt32) {
        self.init(kind: kind.rawValue, leg: leg.rawValue, generation: generation, session: session)
    }
}
