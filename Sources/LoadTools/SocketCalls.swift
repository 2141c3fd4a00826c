import Glibc
import Platform

/// The socket set-up calls LoadTools makes, each with its failure as a SystemCallError.
enum SocketCalls {
    static let streamNonBlocking = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)

    /// A non-blocking listening socket with SO_REUSEADDR (so a restarted server can
    /// bind a port whose old connections linger in TIME_WAIT).
    static func listen(at address: SocketAddress, queueLength: Int32) throws(SystemCallError) -> Int32 {
        let fd = socket(address.family, streamNonBlocking, 0)
        guard fd >= 0 else { throw .lastError("socket") }
        do throws(SystemCallError) {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, name: "setsockopt SO_REUSEADDR")
            let bound = address.withSockaddr { Glibc.bind(fd, $0, $1) }
            guard bound == 0 else { throw .lastError("bind \(address)") }
            guard Glibc.listen(fd, queueLength) == 0 else { throw .lastError("listen \(address)") }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    /// Starts a non-blocking connect. Returns the socket and whether it is already
    /// connected; otherwise completion is reported as writability (then read SO_ERROR).
    /// `receiveBufferBytes` > 0 sets SO_RCVBUF before the connect, where it decides the
    /// window the peer is offered.
    static func startConnect(to address: SocketAddress, noDelay: Bool, receiveBufferBytes: Int = 0)
        throws(SystemCallError) -> (fd: Int32, connected: Bool) {
        let fd = socket(address.family, streamNonBlocking, 0)
        guard fd >= 0 else { throw .lastError("socket") }
        do throws(SystemCallError) {
            if noDelay { try setNoDelay(fd) }
            if receiveBufferBytes > 0 {
                try setOption(fd, SOL_SOCKET, SO_RCVBUF, Int32(clamping: receiveBufferBytes), name: "setsockopt SO_RCVBUF")
            }
        } catch {
            close(fd)
            throw error
        }
        let result = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        if result == 0 { return (fd, true) }
        let failure = errno
        if failure == EINPROGRESS { return (fd, false) }
        close(fd)
        throw SystemCallError(operation: "connect \(address)", errorNumber: failure)
    }

    /// Disables Nagle: a request/response client and an echo server must not hold back
    /// a small tail waiting for an ACK that the peer delays.
    static func setNoDelay(_ fd: Int32) throws(SystemCallError) {
        try setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, name: "setsockopt TCP_NODELAY")
    }

    /// SO_ERROR: the outcome of a non-blocking connect, or a pending socket error (0: none).
    static func pendingError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) == 0 else { return errno }
        return value
    }

    private static func setOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32, name: String) throws(SystemCallError) {
        var value = value
        guard setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw .lastError(name)
        }
    }
}
