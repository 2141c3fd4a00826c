/// One packet of a capture, as the file stored it: its link layer, when
/// it was seen, and how much of it the capture kept.
public struct CapturedPacket: Sendable, Equatable {
    /// LINKTYPE_* of the interface that captured it.
    public var linkType: UInt32
    /// Microseconds since the epoch.
    public var timeUs: UInt64
    /// Where its captured bytes lie in the file.
    public var dataOffset: Int
    public var capturedLength: Int
    /// Its length on the wire; more than `capturedLength` when the snap length cut it.
    public var originalLength: Int

    public init(linkType: UInt32, timeUs: UInt64, dataOffset: Int, capturedLength: Int, originalLength: Int) {
        self.linkType = linkType
        self.timeUs = timeUs
        self.dataOffset = dataOffset
        self.capturedLength = capturedLength
        self.originalLength = originalLength
    }

    public var wasCut: Bool { originalLength > capturedLength }
}

/// What a reader made of a file: its packets in file order, and a warning
/// when the file ends inside a record (a capture cut short by a killed
/// tcpdump, a full disk): the packets before the cut are kept.
public struct CaptureContents: Sendable {
    public var packets: [CapturedPacket] = []
    /// Set when the file ended inside a block or record.
    public var truncatedAtOffset: Int?
    /// Blocks or records that could not be used (unknown interface, unknown block type).
    public var skippedRecords = 0
    public init() {}
}
