import Duplicator

/// One TCP segment taken out of a captured packet: its ends, sequence
/// numbers, flags, and where its payload lies in the capture's bytes.
public struct TCPSegment: Sendable, Equatable {
    public struct Flags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let fin = Flags(rawValue: 0x01)
        public static let syn = Flags(rawValue: 0x02)
        public static let reset = Flags(rawValue: 0x04)
        public static let push = Flags(rawValue: 0x08)
        public static let ack = Flags(rawValue: 0x10)
    }

    public var source: ProxyAddress
    public var destination: ProxyAddress
    public var sequence: UInt32
    public var acknowledgement: UInt32
    public var flags: Flags
    public var timeUs: UInt64
    /// The payload's place in the capture's bytes (what was captured of it).
    public var payloadOffset: Int
    public var payloadLength: Int
    /// The payload bytes the snap length cut off (the segment carried them, the file does not).
    public var payloadBytesCut: Int

    public init(source: ProxyAddress, destination: ProxyAddress, sequence: UInt32, acknowledgement: UInt32, flags: Flags,
                timeUs: UInt64, payloadOffset: Int, payloadLength: Int, payloadBytesCut: Int) {
        self.source = source
        self.destination = destination
        self.sequence = sequence
        self.acknowledgement = acknowledgement
        self.flags = flags
        self.timeUs = timeUs
        self.payloadOffset = payloadOffset
        self.payloadLength = payloadLength
        self.payloadBytesCut = payloadBytesCut
    }
}
