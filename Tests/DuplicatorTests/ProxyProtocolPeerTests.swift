import Foundation
import Glibc
import Synchronization
import Testing
import Platform
@testable import Duplicator

// The PROXY protocol with the peers that speak it: haproxy sending it to
// --accept-proxy, nginx's stream module reading what --send-proxy sends,
// and bad headers from a raw socket. Loopback only, free ports, every
// process stopped at the end. Under CI=true a missing peer fails the test.

/// A blocking TCP client over IPv4 or IPv6 loopback.
final class LoopbackClient {
    let fd: Int32
    let localPort: UInt16

    init(host: String, port: UInt16) throws {
        guard let address = SocketAddress(numericHost: host, port: port) else { throw TestFailure("address \(host)") }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard address.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw TestFailure("connect to \(host) port \(port): errno \(error)")
        }
        self.fd = fd
        localPort = (try? SocketAddress(boundTo: fd).port) ?? 0
    }

    deinit { Glibc.close(fd) }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { return }
            sent += count
        }
    }

    /// Reads until EOF, a reset or 5 s; returns what came and whether the peer closed.
    func readToEnd() -> (bytes: [UInt8], closed: Bool) {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                received += buffer[..<count]
            } else {
                return (received, count == 0 || errno == ECONNRESET)
            }
        }
    }
}

/// Accepts connections on a free loopback port, reads each to its EOF, records
/// its bytes and answers "ok N" (the bytes it got) before closing.
final class RecordingServer: Sendable {
    let port: UInt16
    private let listener: Int32
    private let recordings = Mutex<[[UInt8]]>([])
    private let stopped = Atomic<Bool>(false)

    init(host: String = "127.0.0.1") throws {
        guard let address = SocketAddress(numericHost: host, port: 0) else { throw TestFailure("address \(host)") }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        guard address.withSockaddr({ bind(fd, $0, $1) }) == 0, Glibc.listen(fd, 64) == 0,
              let bound = try? SocketAddress(boundTo: fd) else {
            Glibc.close(fd)
            throw TestFailure("bind/listen on \(host): errno \(errno)")
        }
        port = bound.port
        listener = fd
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    deinit { stop() }

    func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        Glibc.close(listener)
    }

    var connections: [[UInt8]] { recordings.withLock { $0 } }

    private func acceptLoop() {
        while !stopped.load(ordering: .relaxed) {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            Thread.detachNewThread { [self] in serve(fd) }
        }
    }

    private func serve(_ fd: Int32) {
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            received += buffer[..<count]
        }
        recordings.withLock { $0.append(received) }
        let reply = Array("ok \(received.count)\n".utf8)
        _ = reply.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        Glibc.close(fd)
    }
}

@Suite("PROXY protocol with real peers", .serialized, .timeLimit(.minutes(6)))
struct ProxyProtocolPeerTests {
    /// haproxy in TCP mode on IPv4 and IPv6 loopback, passing every client
    /// to `proxyPort` with a PROXY protocol header of `version`.
    func startHaproxy(_ directory: String, to proxyPort: UInt16, version: ProxyProtocol.Version) throws
        -> (server: RealPeerTests.ServerProcess, port: UInt16) {
        let port = freePort()
        let config = """
        global
            maxconn 100
        defaults
            mode tcp
            timeout connect 2s
            timeout client 10s
            timeout server 10s
        frontend clients
            bind 127.0.0.1:\(port)
            bind [::1]:\(port)
            default_backend duplicator
        backend duplicator
            server proxy 127.0.0.1:\(proxyPort) \(version == .v1 ? "send-proxy" : "send-proxy-v2")
        """
        // haproxy refuses a file whose last line has no LF.
        try (config + "\n").write(toFile: directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
        let server = try RealPeerTests.ServerProcess(try Peers.require("haproxy"), ["-db", "-f", directory + "/haproxy.cfg"],
                                                     port: port, directory: directory)
        return (server, port)
    }

    @Test("haproxy send-proxy / send-proxy-v2 in front of --accept-proxy: main and mirror see the client, not haproxy",
          .enabled(if: Peers.runnable("haproxy"), "needs haproxy"), arguments: Config.Backend.tested, ProxyProtocol.Version.allCases)
    func haproxyInFront(backend: Config.Backend, version: ProxyProtocol.Version) throws {
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try RecordingServer()
        let mirror = try RecordingServer()
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: [mirror.port]) {
            $0.acceptProxy = true
            $0.sendProxy = .v1
            $0.threads = 1
        }
        defer { proxy.shutdown() }
        let haproxy = try startHaproxy(directory, to: proxy.port, version: version)
        for host in ["127.0.0.1", "::1"] {
            let client = try LoopbackClient(host: host, port: haproxy.port)
            let payload = Array("hello from \(host)\n".utf8) + TestBytes.random(20_000, seed: 14)
            client.send(payload)
            shutdown(client.fd, Int32(SHUT_WR))
            let (reply, closed) = client.readToEnd()
            #expect(closed)
            let family = host == "::1" ? "TCP6" : "TCP4"
            let header = Array("PROXY \(family) \(host) \(host) \(client.localPort) \(haproxy.port)\r\n".utf8)
            #expect(String(decoding: reply, as: UTF8.self) == "ok \(header.count + payload.count)\n", "\(host)")
            #expect(eventually(timeoutSeconds: 5) { mirror.connections.contains(header + payload) }, "\(host): mirror")
            #expect(main.connections.contains(header + payload),
                    "\(host): main got \(main.connections.map { String(decoding: $0.prefix(80), as: UTF8.self).debugDescription })")
        }
        #expect(proxy.total { $0.sessionsEndedByBadProxyHeader.value } == 0)
        withExtendedLifetime(haproxy) {}
    }

    /// nginx's stream module listening with `proxy_protocol`, logging the
    /// address the header gave and the connection's own.
    func startNginxStream(_ directory: String, host: String) throws -> (server: RealPeerTests.ServerProcess, port: UInt16) {
        let port = freePort()
        let listen = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let config = """
        load_module /usr/lib/nginx/modules/ngx_stream_module.so;
        worker_processes 1;
        daemon off;
        error_log \(directory)/error.log;
        pid \(directory)/nginx.pid;
        events { worker_connections 64; }
        stream {
            log_format proxied 'client $proxy_protocol_addr:$proxy_protocol_port via $remote_addr';
            access_log \(directory)/access.log proxied;
            proxy_protocol_timeout 5s;
            server {
                listen \(listen) proxy_protocol;
                return "hello $proxy_protocol_addr:$proxy_protocol_port\\n";
            }
        }
        """
        try config.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        // (The readiness probe connects without a header: nginx logs it as broken and closes it.)
        return (try RealPeerTests.ServerProcess(try Peers.require("nginx"), ["-p", directory, "-c", directory + "/nginx.conf"],
                                                port: port, directory: directory, host: host), port)
    }

    @Test("nginx stream with proxy_protocol as main behind --send-proxy: its log shows the client's address and port",
          .enabled(if: Peers.runnable("nginx"), "needs nginx and its stream module"),
          arguments: Config.Backend.tested, [(ProxyProtocol.Version.v1, "127.0.0.1"), (.v1, "::1"), (.v2, "127.0.0.1"), (.v2, "::1")])
    func nginxBehind(backend: Config.Backend, peer: (version: ProxyProtocol.Version, host: String)) throws {
        let (version, host) = peer
        let directory = try RealPeerTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let nginx = try startNginxStream(directory, host: host)
        let mirror = try RecordingServer(host: host)
        let listenHost = host.contains(":") ? "[\(host)]" : host
        let proxy = try startProxy(backend: backend, main: nginx.port, mirrors: [mirror.port]) {
            $0.listen = try! Endpoint(parsing: "\(listenHost):0", role: .listen)
            $0.main = try! Endpoint(parsing: "\(listenHost):\(nginx.port)", role: .connect)
            $0.mirrors = [try! Endpoint(parsing: "\(listenHost):\(mirror.port)", role: .connect)]
            $0.sendProxy = version
            $0.threads = 1
        }
        defer { proxy.shutdown() }
        let client = try LoopbackClient(host: host, port: proxy.port)
        shutdown(client.fd, Int32(SHUT_WR))  // nothing to send: the EOF ends the mirror's stream too
        let (reply, closed) = client.readToEnd()
        #expect(closed)
        let clientAddress = "\(host):\(client.localPort)"
        #expect(String(decoding: reply, as: UTF8.self) == "hello \(clientAddress)\n")
        let logged = { (try? String(contentsOfFile: directory + "/access.log", encoding: .utf8)) ?? "" }
        #expect(eventually(timeoutSeconds: 5) { logged().contains("client \(clientAddress) via \(host)") },
                "nginx's access log: \(logged())")
        // The mirror got the very header main got (and nothing else: the client sent nothing).
        var header = [UInt8](repeating: 0, count: ProxyProtocol.encodedBytesMax)
        let addresses = ProxyAddresses(source: ProxyProtocolTests.address(host, client.localPort),
                                       destination: ProxyProtocolTests.address(host, proxy.port))
        let length = header.withUnsafeMutableBytes { ProxyProtocol.encode(version, addresses, into: $0) }
        #expect(eventually(timeoutSeconds: 5) { mirror.connections == [Array(header[..<length])] },
                "mirror got \(mirror.connections.map { String(decoding: $0, as: UTF8.self).debugDescription })")
    }

    @Test("--accept-proxy closes garbage, truncated and oversized headers, counted, and main never sees them", arguments: Config.Backend.tested)
    func badHeadersFromARealSocket(backend: Config.Backend) throws {
        let main = try RecordingServer()
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: []) {
            $0.acceptProxy = true
            $0.proxyHeaderTimeoutMs = 500
            $0.threads = 1
        }
        defer { proxy.shutdown() }
        let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        let cases: [(String, [UInt8], closedWithinSeconds: Double)] = [
            ("garbage", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), 0.4),
            ("a v1 line without its end, longer than 107 bytes", Array("PROXY TCP4 ".utf8) + [UInt8](repeating: 0x37, count: 200), 0.4),
            ("a v2 header claiming 4 KiB", signature + [0x21, 0x11, 0x10, 0x00] + [UInt8](repeating: 0, count: 64), 0.4),
            ("a malformed v1 line", Array("PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\nhello".utf8), 0.4),
            ("a truncated v1 line, then silence", Array("PROXY TCP4 192.0.2.1 ".utf8), 1.5),
            ("a truncated v2 header, then silence", Array(signature.prefix(14)), 1.5),
            ("nothing at all", [], 1.5),
        ]
        for (index, (name, bytes, bound)) in cases.enumerated() {
            let client = try LoopbackClient(host: "127.0.0.1", port: proxy.port)
            let start = monotonicSeconds()
            client.send(bytes)
            let (reply, closed) = client.readToEnd()
            let elapsed = monotonicSeconds() - start
            #expect(closed && reply.isEmpty, "\(name)")
            #expect(elapsed < bound, "\(name): closed after \(elapsed) s")
            #expect(eventually(timeoutSeconds: 2) { proxy.total { $0.sessionsEndedByBadProxyHeader.value } == UInt64(index + 1) },
                    "\(name)")
        }
        // A good header still works, and only it reached main.
        let client = try LoopbackClient(host: "127.0.0.1", port: proxy.port)
        client.send(Array("PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nping\n".utf8))
        shutdown(client.fd, Int32(SHUT_WR))
        #expect(String(decoding: client.readToEnd().bytes, as: UTF8.self) == "ok 5\n")
        #expect(main.connections == [Array("ping\n".utf8)])
    }
}

@Suite("PROXY protocol on a dual-stack listener")
struct ProxyProtocolDualStackTests {
    @Test("--send-proxy on [::]: an IPv4 client is sent as TCP4, an IPv6 one as TCP6", arguments: Config.Backend.tested, ProxyProtocol.Version.allCases)
    func dualStack(backend: Config.Backend, version: ProxyProtocol.Version) throws {
        let main = try RecordingServer()
        let proxy = try startProxy(backend: backend, main: main.port, mirrors: []) {
            $0.listen = try! Endpoint(parsing: "[::]:0", role: .listen)
            $0.sendProxy = version
            $0.threads = 1
        }
        defer { proxy.shutdown() }
        for host in ["127.0.0.1", "::1"] {
            let client = try LoopbackClient(host: host, port: proxy.port)
            client.send(Array("x".utf8))
            shutdown(client.fd, Int32(SHUT_WR))
            _ = client.readToEnd()
            let addresses = ProxyAddresses(source: ProxyProtocolTests.address(host, client.localPort),
                                           destination: ProxyProtocolTests.address(host, proxy.port))
            let header = ProxyProtocolTests.encode(version, addresses)
            #expect(eventually(timeoutSeconds: 5) { main.connections.contains(header + Array("x".utf8)) },
                    "\(host): main got \(main.connections.map { $0.prefix(60) })")
        }
    }
}
