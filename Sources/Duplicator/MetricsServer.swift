import Glibc
import Ring
import Synchronization

/// `GET /metrics` over HTTP/1.x on its own small thread: a scrape every few
/// seconds needs no io_uring, and keeping it off the workers keeps their
/// loops free of anything but the data path. One request per connection.
public final class MetricsServer: Sendable {
    public let address: SocketAddress
    private let listener: Int32
    private let render: @Sendable () -> String
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    public init(endpoint: Endpoint, render: @escaping @Sendable () -> String) throws {
        let resolved: SocketAddress
        do {
            resolved = try endpoint.resolve(role: .listen)
            listener = try Sockets.listen(on: resolved, backlog: 64)
        } catch let error as ConfigError {
            throw ProxyError(error.message)
        } catch let error as RingError {
            throw ProxyError("cannot listen for metrics on \(endpoint.text): \(RingError.describe(errno: error.errno))")
        }
        address = Sockets.localAddress(listener) ?? resolved
        self.render = render
        let thread = try spawnThread { [self] in serve() }
        pthread_detach(thread)
    }

    deinit { close(listener) }

    public func stop() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .acquiring) { usleep(1000) }
    }

    private func serve() {
        defer { finished.store(true, ordering: .releasing) }
        while !stopping.load(ordering: .relaxed) {
            var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 100) > 0 else { continue }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                usleep(10_000)  // out of descriptors: do not spin
                continue
            }
            respond(fd)
            close(fd)
        }
    }

    private func respond(_ fd: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while request.count < 16384 {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return }
            request += buffer[0..<count]
            if request.firstRange(of: [13, 10, 13, 10]) != nil { break }
        }
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
        response.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let sent = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if sent <= 0 { return }
                offset += sent
            }
        }
    }
}
