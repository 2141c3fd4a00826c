import Glibc

/// One LoadClient connection: a request in flight and how far it got.
final class ClientConnection {
    enum State {
        case connecting
        case active
        case closed
    }

    let index: Int
    var fd: Int32 = -1
    var state = State.connecting
    var sequence: UInt64 = 0
    var sendOffset = 0
    var receiveOffset = 0
    var requestStartNanos: UInt64 = 0
    /// Open loop: when this connection's next request is due (0: none waits).
    var nextRequestNanos: UInt64 = 0
    /// EPOLLOUT is in the interest set: only while a connect or a send is blocked, so the
    /// steady state needs no epoll_ctl per request.
    var wantsWritable = false
    /// io_uring: a send of this connection is in flight (one at a time keeps order).
    var sendInFlight = false
    /// io_uring: the whole reply came while the send's completion had not yet
    /// (it may be reaped after the reply); the request completes with the send.
    var replyWaitsForSend = false

    init(index: Int) {
        self.index = index
    }

    /// At a run's end: closes each connection still open.
    static func closeAll(_ connections: [ClientConnection]) {
        for connection in connections where connection.state != .closed {
            close(connection.fd)
            connection.state = .closed
        }
    }
}
