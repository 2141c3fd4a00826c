import Duplicator

/// One TCP connection of a capture, put back together: what the client
/// sent, what the server answered, and the turns of their conversation.
///
/// A turn is what the client sent before the server next answered,
/// together with everything the server answered before the client sent
/// again. The replayer sends a turn once the target has answered the
/// previous one as much as the recording did (`replyEnd`), so a protocol
/// whose requests depend on earlier replies keeps its order without being
/// understood. A server that speaks first (a greeting) makes turn 0's
/// request empty.
public struct RecordedSession: Sendable {
    public struct Turn: Sendable, Equatable {
        /// The client's bytes of this turn end here (in `clientBytes`).
        public var requestEnd: Int
        /// The server had answered this much of `serverBytes` by the next turn.
        public var replyEnd: Int
        /// When the recording saw the turn's first client byte.
        public var timeUs: UInt64

        public init(requestEnd: Int, replyEnd: Int, timeUs: UInt64) {
            self.requestEnd = requestEnd
            self.replyEnd = replyEnd
            self.timeUs = timeUs
        }
    }

    public var client: ProxyAddress
    public var server: ProxyAddress
    public var startUs: UInt64
    public var endUs: UInt64
    public var clientBytes: [UInt8]
    public var serverBytes: [UInt8]
    public var turns: [Turn]
    /// The client ended its side (FIN) in the recording.
    public var clientClosed: Bool
    public var serverClosed: Bool

    public init(client: ProxyAddress, server: ProxyAddress, startUs: UInt64, endUs: UInt64, clientBytes: [UInt8],
                serverBytes: [UInt8], turns: [Turn], clientClosed: Bool, serverClosed: Bool) {
        self.client = client
        self.server = server
        self.startUs = startUs
        self.endUs = endUs
        self.clientBytes = clientBytes
        self.serverBytes = serverBytes
        self.turns = turns
        self.clientClosed = clientClosed
        self.serverClosed = serverClosed
    }

    /// The turns of two reassembled streams, from their pieces' times. On
    /// equal times the client's piece goes first: a reply cannot precede its request.
    public static func turns(client: StreamReassembler, server: StreamReassembler) -> [Turn] {
        var turns: [Turn] = []
        var clientIndex = 0
        var serverIndex = 0
        var serverSinceTurn = true  // so the first client piece opens turn 0
        while clientIndex < client.pieceEnds.count || serverIndex < server.pieceEnds.count {
            let takeClient = serverIndex == server.pieceEnds.count
                || (clientIndex < client.pieceEnds.count && client.pieceTimesUs[clientIndex] <= server.pieceTimesUs[serverIndex])
            if takeClient {
                let time = client.pieceTimesUs[clientIndex]
                let end = client.pieceEnds[clientIndex]
                clientIndex += 1
                if serverSinceTurn || turns.isEmpty {
                    turns.append(Turn(requestEnd: end, replyEnd: turns.last?.replyEnd ?? 0, timeUs: time))
                    serverSinceTurn = false
                } else {
                    turns[turns.count - 1].requestEnd = end
                }
            } else {
                let end = server.pieceEnds[serverIndex]
                let time = server.pieceTimesUs[serverIndex]
                serverIndex += 1
                if turns.isEmpty { turns.append(Turn(requestEnd: 0, replyEnd: 0, timeUs: time)) }
                turns[turns.count - 1].replyEnd = end
                serverSinceTurn = true
            }
        }
        return turns
    }

    /// Turns that carry client bytes: the requests.
    public var requestCount: Int {
        var previous = 0
        var count = 0
        for turn in turns {
            if turn.requestEnd > previous { count += 1 }
            previous = turn.requestEnd
        }
        return count
    }
}
