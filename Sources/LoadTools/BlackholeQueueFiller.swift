import Glibc
import Platform

/// Fills the accept queue of a listener made with a queue length of 0 (listen(2)'s backlog) and never accepted from, so
/// that any further connect() hangs in SYN_SENT: the kernel drops SYNs for a full queue.
///
/// Rather than assume how many connections a queue length of 0 admits (Linux: one), it
/// connects until the listener's TCP_INFO says the queue is over its limit (for a
/// listener, tcpi_unacked is the queue length and tcpi_sacked the most it may hold). Where
/// TCP_INFO does not say, a connect that stays pending is the proof.
enum BlackholeQueueFiller {
    static let fillersMax = 16
    static let connectWaitMs: Int32 = 1000
    static let queueCountWaitMs = 100

    /// Returns the filler sockets; they must stay open as long as the listener.
    static func fill(listenerFd: Int32, connectingTo address: SocketAddress) throws(SystemCallError) -> [Int32] {
        var fillers: [Int32] = []
        do throws(SystemCallError) {
            while fillers.count < fillersMax {
                let (fd, connected) = try SocketCalls.startConnect(to: address, noDelay: false)
                fillers.append(fd)
                if !connected {
                    var watched = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    if poll(&watched, 1, connectWaitMs) == 0 {
                        return fillers  // the SYN was dropped: the queue is full
                    }
                    let failure = SocketCalls.pendingError(fd)
                    if failure != 0 {
                        throw SystemCallError(operation: "connect \(address) to fill the blackhole queue", errorNumber: failure)
                    }
                }
                // The listener counts the connection when it handles the final ACK, which
                // may come just after the connecting side saw its connect complete.
                for _ in 0..<queueCountWaitMs {
                    if acceptQueueIsFull(listenerFd) { return fillers }
                    usleep(1000)
                }
            }
            throw SystemCallError(operation: "fill the accept queue of \(address) with \(fillersMax) connections", errorNumber: EAGAIN)
        } catch {
            fillers.forEach { close($0) }
            throw error
        }
    }

    /// Linux drops SYNs once the queue length exceeds the most it may hold.
    private static func acceptQueueIsFull(_ listenerFd: Int32) -> Bool {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(listenerFd, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return false }
        return info.tcpi_unacked > info.tcpi_sacked
    }
}
