import Duplicator

/// Every TCP connection of a capture, reassembled (`StreamReassembler` per
/// direction) and turned into `RecordedSession`s, with what could not be
/// used counted by reason.
///
/// The client is the end that sent the SYN (or received the SYN-ACK);
/// with `serverPort`, only connections with an end on that port are taken,
/// and that end is the server. A connection whose handshake the capture
/// missed (begun before it) cannot be placed in its streams and is
/// skipped; so is one whose payload the snap length cut, and one with a
/// hole the capture never filled. A SYN with a new sequence number on a
/// pair of ports already seen starts a new connection (the port reused).
public struct CaptureAssembler {
    public struct Counts: Sendable, Equatable {
        public var packets = 0
        public var tcpSegments = 0
        /// Packets that were not TCP over IP, by `PacketDecoder.Skip`.
        public var packetsSkipped = [Int](repeating: 0, count: PacketDecoder.Skip.allCases.count)
        /// Link types not understood (the first seen), for the message.
        public var unknownLinkType: UInt32?
        public var connections = 0
        public var skippedNoHandshake = 0
        public var skippedCut = 0
        public var skippedHole = 0
        public var skippedOtherPort = 0
        public var duplicateSegments = 0
        public var outOfOrderSegments = 0
        public init() {}

        public var skippedSessions: Int { skippedNoHandshake + skippedCut + skippedHole }
        public func skipped(_ reason: PacketDecoder.Skip) -> Int { packetsSkipped[reason.rawValue] }
    }

    /// One connection while it is read: its two ends in the order first seen.
    struct Connection {
        var ends: (ProxyAddress, ProxyAddress)
        var streams = (StreamReassembler(), StreamReassembler())
        /// Which end sent a SYN without ACK (the client), or a SYN-ACK (the server).
        var clientEnd: Int?
        var firstUs: UInt64
        var lastUs: UInt64
        var reset = false

        func end(of address: ProxyAddress) -> Int { address == ends.0 ? 0 : 1 }
    }

    /// The pair of ends, in either order.
    struct Key: Hashable {
        var first: ProxyAddress
        var second: ProxyAddress
        init(_ first: ProxyAddress, _ second: ProxyAddress) {
            self.first = first
            self.second = second
        }

        static func == (lhs: Key, rhs: Key) -> Bool {
            (lhs.first == rhs.first && lhs.second == rhs.second) || (lhs.first == rhs.second && lhs.second == rhs.first)
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(first.hashValue ^ second.hashValue)
        }
    }

    public let serverPort: UInt16?
    public private(set) var counts = Counts()
    private var open: [Key: Int] = [:]
    private var connections: [Connection?] = []
    private var sessions: [RecordedSession] = []

    public init(serverPort: UInt16? = nil) {
        self.serverPort = serverPort
    }

    /// Every packet of one file's contents.
    public mutating func add(_ contents: CaptureContents, bytes: UnsafeRawBufferPointer) {
        for packet in contents.packets {
            counts.packets += 1
            switch PacketDecoder.decode(packet, in: bytes) {
            case .success(let segment):
                let payload = UnsafeRawBufferPointer(rebasing: bytes[segment.payloadOffset..<(segment.payloadOffset + segment.payloadLength)])
                add(segment, payload: payload)
            case .failure(let reason):
                counts.packetsSkipped[reason.skip.rawValue] += 1
                if reason.skip == .linkType, counts.unknownLinkType == nil { counts.unknownLinkType = reason.linkType }
            }
        }
    }

    public mutating func add(_ segment: TCPSegment, payload: UnsafeRawBufferPointer) {
        counts.tcpSegments += 1
        if let serverPort, segment.source.port != serverPort && segment.destination.port != serverPort {
            return
        }
        let key = Key(segment.source, segment.destination)
        let isOpeningSYN = segment.flags.contains(.syn) && !segment.flags.contains(.ack)
        var index = open[key]
        if let existing = index, isOpeningSYN, let connection = connections[existing] {
            // A new SYN on known ports: the same connection's retransmitted SYN, or a new one.
            let end = connection.end(of: segment.source)
            let stream = end == 0 ? connection.streams.0 : connection.streams.1
            if let first = stream.firstSequence, first != segment.sequence &+ 1 {
                finish(existing)
                index = nil
            }
        }
        if index == nil {
            index = connections.count
            connections.append(Connection(ends: (segment.source, segment.destination), firstUs: segment.timeUs, lastUs: segment.timeUs))
            open[key] = index
            counts.connections += 1
        }
        let slot = index!
        guard var connection = connections[slot] else { return }
        connections[slot] = nil  // edited in place, without a copy of its streams
        let end = connection.end(of: segment.source)
        if segment.flags.contains(.syn) {
            if connection.clientEnd == nil { connection.clientEnd = segment.flags.contains(.ack) ? 1 - end : end }
            if end == 0 { connection.streams.0.start(synSequence: segment.sequence) }
            else { connection.streams.1.start(synSequence: segment.sequence) }
        }
        if segment.flags.contains(.reset) { connection.reset = true }
        // A SYN's sequence number is its own, not a data byte's.
        let sequence = segment.flags.contains(.syn) ? segment.sequence &+ 1 : segment.sequence
        if end == 0 {
            connection.streams.0.add(sequence: sequence, payload: payload, cutBytes: segment.payloadBytesCut,
                                     fin: segment.flags.contains(.fin), timeUs: segment.timeUs)
        } else {
            connection.streams.1.add(sequence: sequence, payload: payload, cutBytes: segment.payloadBytesCut,
                                     fin: segment.flags.contains(.fin), timeUs: segment.timeUs)
        }
        connection.firstUs = min(connection.firstUs, segment.timeUs)
        connection.lastUs = max(connection.lastUs, segment.timeUs)
        connections[slot] = connection
    }

    /// Every session, in order of their start.
    public mutating func finish() -> [RecordedSession] {
        for index in connections.indices where connections[index] != nil { finish(index) }
        open = [:]
        connections = []
        let done = sessions.sorted { $0.startUs < $1.startUs }
        sessions = []
        return done
    }

    private mutating func finish(_ index: Int) {
        guard let connection = connections[index] else { return }
        connections[index] = nil
        let streams = [connection.streams.0, connection.streams.1]
        counts.duplicateSegments += streams.reduce(0) { $0 + $1.duplicateSegments }
        counts.outOfOrderSegments += streams.reduce(0) { $0 + $1.outOfOrderSegments }
        var clientEnd = connection.clientEnd
        if let serverPort {
            if connection.ends.0.port == serverPort && connection.ends.1.port != serverPort { clientEnd = 1 }
            if connection.ends.1.port == serverPort && connection.ends.0.port != serverPort { clientEnd = 0 }
        }
        guard let clientEnd, streams[0].firstSequence != nil, streams[1].firstSequence != nil else {
            counts.skippedNoHandshake += 1
            return
        }
        if streams.contains(where: { $0.bytesCut > 0 }) {
            counts.skippedCut += 1
            return
        }
        if streams.contains(where: { $0.hasHole }) {
            counts.skippedHole += 1
            return
        }
        let client = streams[clientEnd]
        let server = streams[1 - clientEnd]
        sessions.append(RecordedSession(
            client: clientEnd == 0 ? connection.ends.0 : connection.ends.1,
            server: clientEnd == 0 ? connection.ends.1 : connection.ends.0,
            startUs: connection.firstUs, endUs: connection.lastUs,
            clientBytes: client.bytes, serverBytes: server.bytes,
            turns: RecordedSession.turns(client: client, server: server),
            clientClosed: client.finOffset != nil || connection.reset, serverClosed: server.finOffset != nil))
    }
}
