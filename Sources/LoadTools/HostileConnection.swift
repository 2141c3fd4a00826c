/// One HostileClient connection.
final class HostileConnection {
    enum State {
        case waiting  // connect not started yet
        case connecting
        case open
        case closed
    }

    let index: Int
    var fd: Int32 = -1
    var state = State.waiting
    /// Bytes of the current request sent (stall, slow-read) or bytes trickled (slowloris).
    var sentBytes = 0
    /// slow-read: bytes of the current reply read.
    var receivedBytes = 0
    /// The epoll interest set now, so it is changed only when it must be.
    var interest: UInt32 = 0
    /// In the epoll set (added once; closing the descriptor removes it).
    var registered = false
    /// slow-read: the peer's FIN arrived; the slow reads go on until they reach it.
    var peerFinished = false

    init(index: Int) {
        self.index = index
    }
}
