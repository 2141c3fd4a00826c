import Glibc
import Ring
import Synchronization
import Platform

/// `GET /metrics` over HTTP/1.x on its own small thread: a scrape every few
/// seconds needs no io_uring, and keeping it off the workers keeps their
/// loops free of anything but the data path. One request per connection.
///
/// No client can hold it, however slow or many: every socket is non-blocking
/// and one poll(2) watches the listener and up to `connectionsMax`
/// connections; each must send its request and take its response within
/// `connectionDeadlineMs` of its accept or is closed, and a client beyond
/// `connectionsMax` is closed as it arrives. `stop()` returns within one poll
/// interval, so the endpoint never delays the exit.
public final class MetricsServer: Sendable {
    /// Scrapers served at once; a Prometheus or two and an operator's curl need a few.
    public static let connectionsMax = 64
    /// From accept to the last byte of the response.
    public static let connectionDeadlineMs = 2000
    /// A request head longer than this is answered from what came.
    static let requestBytesMax = 16384
    /// How long `stop()` may wait for the thread to notice.
    private static let pollIntervalMs = 50

    public let address: SocketAddress
    private let listener: Int32
    private let render: @Sendable () -> String
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    public convenience init(endpoint: Endpoint, render: @escaping @Sendable () -> String) throws {
        let listener: Int32
        do {
            listener = try Sockets.listen(on: try endpoint.resolve(role: .listen), queueLength: 64)
        } catch let error as ConfigError {
            throw ProxyError(error.message)
        } catch let error as SystemCallError {
            throw ProxyError("cannot listen for metrics on \(endpoint.text): \(SystemCallError.describe(errorNumber: error.errorNumber))")
        }
        try self.init(listener: listener, render: render)
    }

    /// Serves on `listener`, a listening socket that is now this server's
    /// (closed with it): one bound above, or one a handover brought.
    public init(listener: Int32, render: @escaping @Sendable () -> String) throws {
        self.listener = listener
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
        address = Sockets.localAddress(listener) ?? SocketAddress(numericHost: "0.0.0.0", port: 0)!
        self.render = render
        // Throwing here deinitialises self, which closes the listener.
        try startThread("metrics") { [self] in serve() }.detach()
    }

    /// The listening socket, for a handover to a new process (which gets
    /// its own descriptor of it); it stays open until this server is gone.
    public var listenerForHandover: Int32 { listener }

    deinit { close(listener) }

    /// Returns within about `pollIntervalMs`, whatever the clients do; open
    /// connections are closed unanswered.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .acquiring) { usleep(1000) }
    }

    /// One client: its request as it arrives, then its response as it leaves.
    private struct Connection {
        let fd: Int32
        let deadlineMs: Int
        var request: [UInt8] = []
        var response: [UInt8]?
        var sent = 0
    }

    private func serve() {
        var connections: [Connection] = []
        connections.reserveCapacity(Self.connectionsMax)
        var entries: [pollfd] = []
        entries.reserveCapacity(Self.connectionsMax + 1)
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Out of descriptors, the listener stays readable: rest it instead of spinning.
        var listenerRestsUntilMs = 0
        defer {
            for connection in connections { close(connection.fd) }
            finished.store(true, ordering: .releasing)
        }
        while !stopping.load(ordering: .relaxed) {
            var now = Int(MonotonicClock.nowMs())
            entries.removeAll(keepingCapacity: true)
            entries.append(pollfd(fd: listener, events: now >= listenerRestsUntilMs ? Int16(POLLIN) : 0, revents: 0))
            var timeoutMs = Self.pollIntervalMs
            for connection in connections {
                entries.append(pollfd(fd: connection.fd, events: Int16(connection.response == nil ? POLLIN : POLLOUT), revents: 0))
                timeoutMs = min(timeoutMs, max(0, connection.deadlineMs - now))
            }
            if listenerRestsUntilMs > now { timeoutMs = min(timeoutMs, listenerRestsUntilMs - now) }
            guard poll(&entries, nfds_t(entries.count), Int32(timeoutMs)) >= 0 || errno == EINTR else {
                usleep(10_000)
                continue
            }
            if stopping.load(ordering: .relaxed) { break }
            now = Int(MonotonicClock.nowMs())
            // Backwards, so removing one leaves the entries of those before it in place.
            for index in connections.indices.reversed() {
                var open = true
                if entries[index + 1].revents != 0 { open = advance(&connections[index], buffer: &buffer) }
                if open && now >= connections[index].deadlineMs { open = false }
                if !open {
                    close(connections[index].fd)
                    connections.remove(at: index)
                }
            }
            if entries[0].revents != 0 && !accept(into: &connections, now: now) {
                listenerRestsUntilMs = now + 100
            }
        }
    }

    /// Accepts what waits, a bounded number per wakeup so a flood of connects
    /// cannot starve the connections already open. False when out of descriptors.
    private func accept(into connections: inout [Connection], now: Int) -> Bool {
        for _ in 0..<Self.connectionsMax {
            let fd = Glibc.accept(listener, nil, nil)  // accept4 hides behind _GNU_SOURCE
            guard fd >= 0 else {
                switch errno {
                case EINTR, ECONNABORTED: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM: return false
                default: return true  // EAGAIN: none left
                }
            }
            guard connections.count < Self.connectionsMax else {
                close(fd)
                continue
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            connections.append(Connection(fd: fd, deadlineMs: now + Self.connectionDeadlineMs))
        }
        return true
    }

    /// Reads what the client sent and writes what it can take, never waiting.
    /// False when the connection is done: answered, gone or broken.
    private func advance(_ connection: inout Connection, buffer: inout [UInt8]) -> Bool {
        if connection.response == nil {
            while !Self.isComplete(connection.request) {
                let room = min(buffer.count, Self.requestBytesMax - connection.request.count)
                let count = buffer.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress, room, 0) }
                if count > 0 {
                    connection.request += buffer[0..<count]
                } else if count < 0 && errno == EINTR {
                    continue
                } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    return true
                } else {
                    return false  // EOF before a whole request, or an error
                }
            }
            connection.response = Self.response(to: connection.request, render: render)
        }
        guard let response = connection.response else { return false }
        while connection.sent < response.count {
            let sent = response.withUnsafeBytes { raw in
                send(connection.fd, raw.baseAddress! + connection.sent, raw.count - connection.sent,
                     Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if sent > 0 {
                connection.sent += sent
            } else if sent < 0 && errno == EINTR {
                continue
            } else {
                return sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
            }
        }
        return false
    }

    static func isComplete(_ request: [UInt8]) -> Bool {
        request.count >= requestBytesMax || request.firstRange(of: [13, 10, 13, 10]) != nil
    }

    /// The whole response to a request head: 200 with the metrics for GET or
    /// HEAD /metrics, 405 for other methods, 404 for other paths.
    static func response(to request: [UInt8], render: () -> String) -> [UInt8] {
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        let (status, type, body): (String, String, String)
        if parts.count >= 2, parts[0] == "GET" || parts[0] == "HEAD",
           parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") {
            (status, type, body) = ("200 OK", PrometheusText.contentType, render())
        } else if parts.count >= 2, parts[0] != "GET" && parts[0] != "HEAD" {
            (status, type, body) = ("405 Method Not Allowed", "text/plain", "only GET /metrics\n")
        } else {
            (status, type, body) = ("404 Not Found", "text/plain", "try GET /metrics\n")
        }
        let bodyBytes = Array(body.utf8)
        var response = Array("HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(bodyBytes.count)\r\nConnection: close\r\n\r\n".utf8)
        if parts.first != "HEAD" { response += bodyBytes }
        return response
    }
}
