import Synchronization

/// What a test server saw on one accepted connection.
public struct ConnectionRecord: Sendable, Hashable {
    /// 0 for the first connection the server accepted, then 1, 2, ...
    public var acceptIndex: UInt64
    public var bytesReceived: UInt64
    /// FNV-1a 64 of every byte received so far, in order (`FNV1a64.offsetBasis` when
    /// none); 0 when the server was made with `computesDigests: false`.
    public var receivedDigest: UInt64
    public var bytesSent: UInt64
    /// The peer ended its sending side: an EOF (FIN) or a reset was seen.
    public var peerClosed: Bool
    /// The connection ended with a reset or another socket error.
    public var wasReset: Bool
    /// The server still holds the socket.
    public var isOpen: Bool

    public init(acceptIndex: UInt64, bytesReceived: UInt64 = 0, receivedDigest: UInt64 = FNV1a64.offsetBasis,
                bytesSent: UInt64 = 0, peerClosed: Bool = false, wasReset: Bool = false, isOpen: Bool = true) {
        self.acceptIndex = acceptIndex
        self.bytesReceived = bytesReceived
        self.receivedDigest = receivedDigest
        self.bytesSent = bytesSent
        self.peerClosed = peerClosed
        self.wasReset = wasReset
        self.isOpen = isOpen
    }
}

/// The shared copy of one ConnectionRecord: written by the server thread, read by any.
///
/// A sequence lock keeps the hot path free of locks and read-modify-writes: the single
/// writer bumps `sequence` to odd, stores the fields, bumps it to even; a reader retries
/// until it saw the same even sequence before and after, so bytesReceived and the digest
/// in a snapshot always belong together. (Boehm's fences for seqlocks in the C++11
/// memory model; on x86 every access here is a plain move.)
final class ConnectionRecordCell: Sendable {
    let acceptIndex: UInt64
    let hasDigest: Bool
    private let sequence = Atomic<UInt64>(0)
    private let bytesReceived = Atomic<UInt64>(0)
    private let receivedDigest = Atomic<UInt64>(FNV1a64.offsetBasis)
    private let bytesSent = Atomic<UInt64>(0)
    private let flags = Atomic<UInt8>(Flag.open)

    private enum Flag {
        static let peerClosed: UInt8 = 1
        static let reset: UInt8 = 2
        static let open: UInt8 = 4
    }

    init(acceptIndex: UInt64, hasDigest: Bool) {
        self.acceptIndex = acceptIndex
        self.hasDigest = hasDigest
    }

    /// Server thread only.
    func publish(bytesReceived received: UInt64, receivedDigest digest: UInt64, bytesSent sent: UInt64,
                 peerClosed: Bool, wasReset: Bool, isOpen: Bool) {
        let start = sequence.load(ordering: .relaxed)
        sequence.store(start &+ 1, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
        bytesReceived.store(received, ordering: .relaxed)
        receivedDigest.store(digest, ordering: .relaxed)
        bytesSent.store(sent, ordering: .relaxed)
        flags.store((peerClosed ? Flag.peerClosed : 0) | (wasReset ? Flag.reset : 0) | (isOpen ? Flag.open : 0),
                    ordering: .relaxed)
        sequence.store(start &+ 2, ordering: .releasing)
    }

    /// Server thread only: its own last write, no retry needed.
    var isOpenForWriter: Bool {
        flags.load(ordering: .relaxed) & Flag.open != 0
    }

    /// Any thread.
    func snapshot() -> ConnectionRecord {
        while true {
            let before = sequence.load(ordering: .acquiring)
            let received = bytesReceived.load(ordering: .relaxed)
            let digest = receivedDigest.load(ordering: .relaxed)
            let sent = bytesSent.load(ordering: .relaxed)
            let flagBits = flags.load(ordering: .relaxed)
            atomicMemoryFence(ordering: .acquiring)
            let after = sequence.load(ordering: .relaxed)
            if before == after, before & 1 == 0 {
                return ConnectionRecord(
                    acceptIndex: acceptIndex, bytesReceived: received, receivedDigest: hasDigest ? digest : 0, bytesSent: sent,
                    peerClosed: flagBits & Flag.peerClosed != 0, wasReset: flagBits & Flag.reset != 0,
                    isOpen: flagBits & Flag.open != 0)
            }
        }
    }
}
