/// One accepted connection, owned by the server thread.
final class ServerConnection {
    let fd: Int32
    /// Its epoll token: a generation in the high half tells a stale event for a reused
    /// fd number from one for this connection.
    let token: UInt64
    let record: ConnectionRecordCell
    var interestFlags: UInt32
    var isOpen = true

    var bytesReceived: UInt64 = 0
    var digest = FNV1a64()
    var bytesSent: UInt64 = 0
    var peerClosed = false
    var wasReset = false

    // Echo bytes the peer did not take yet; at most one read's worth, because the
    // connection is not read again until they are written.
    private var pendingBuffer: UnsafeMutableRawBufferPointer?
    private var pendingStart = 0
    private var pendingEnd = 0

    init(fd: Int32, token: UInt64, record: ConnectionRecordCell, interestFlags: UInt32) {
        self.fd = fd
        self.token = token
        self.record = record
        self.interestFlags = interestFlags
    }

    deinit {
        pendingBuffer?.deallocate()
    }

    var hasPendingOutput: Bool { pendingStart < pendingEnd }

    var pendingOutput: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: pendingBuffer![pendingStart..<pendingEnd])
    }

    /// Keeps `bytes` (at most `capacityBytes`) to write later. Allocated on the first
    /// short write only, then reused.
    func storePendingOutput(_ bytes: UnsafeRawBufferPointer, capacityBytes: Int) {
        if pendingBuffer == nil {
            pendingBuffer = .allocate(byteCount: capacityBytes, alignment: 16)
        }
        pendingBuffer!.copyMemory(from: bytes)
        pendingStart = 0
        pendingEnd = bytes.count
    }

    func consumePendingOutput(_ count: Int) {
        pendingStart += count
    }

    /// Copies the counters to the record that other threads read.
    func publish() {
        record.publish(bytesReceived: bytesReceived, receivedDigest: digest.value, bytesSent: bytesSent,
                       peerClosed: peerClosed, wasReset: wasReset, isOpen: isOpen)
    }
}
