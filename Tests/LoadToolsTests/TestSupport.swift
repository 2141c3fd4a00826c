import Glibc
import LoadTools
import Testing

/// Every LoadTools test opens sockets or counts descriptors, so they run one at a time:
/// a descriptor count is only meaningful when nothing else in this target opens any.
@Suite(.serialized, .timeLimit(.minutes(6)))
struct LoadToolsTests {}

/// Socket helpers for driving the servers byte by byte from a test, bounded in time.
enum TestSocket {
    static let timeoutNanos: UInt64 = 5_000_000_000

    /// A connected, non-blocking socket to 127.0.0.1:`port`.
    static func connect(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if result != 0 {
            let failure = errno
            close(fd)
            Issue.record("connect 127.0.0.1:\(port): \(String(cString: strerror(failure)))")
            throw SocketTestFailure()
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Sends `bytes`, half-closes, and returns everything received until the peer's EOF,
    /// reading while it writes (an echo server stops reading while we do not read).
    static func exchange(_ fd: Int32, sending bytes: [UInt8]) throws -> [UInt8] {
        var received: [UInt8] = []
        var sent = 0
        var halfClosed = false
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        let deadline = nowNanos() + timeoutNanos
        while nowNanos() < deadline {
            if sent == bytes.count, !halfClosed {
                shutdown(fd, Int32(SHUT_WR))
                halfClosed = true
            }
            var watched = pollfd(fd: fd, events: Int16(POLLIN) | (halfClosed ? 0 : Int16(POLLOUT)), revents: 0)
            _ = poll(&watched, 1, 100)
            if !halfClosed, watched.revents & Int16(POLLOUT) != 0 {
                let count = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, min(bytes.count - sent, 65536), Int32(MSG_NOSIGNAL)) }
                if count > 0 { sent += count }
            }
            if watched.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let count = recv(fd, buffer.baseAddress, buffer.count, 0)
                if count > 0 {
                    received += buffer[..<count]
                } else if count == 0 {
                    return received
                } else if errno != EAGAIN {
                    Issue.record("recv: \(String(cString: strerror(errno)))")
                    throw SocketTestFailure()
                }
            }
        }
        Issue.record("no EOF within \(timeoutNanos / 1_000_000_000) s (sent \(sent) of \(bytes.count), received \(received.count))")
        throw SocketTestFailure()
    }

    /// Closes with a reset instead of a FIN (SO_LINGER with a zero timeout).
    static func reset(_ fd: Int32) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
    }
}

struct SocketTestFailure: Error {}

func nowNanos() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// Polls `condition` every 5 ms for up to `timeoutMs`; returns its last value.
func eventually(timeoutMs: UInt64 = 2000, _ condition: () -> Bool) -> Bool {
    let deadline = nowNanos() + timeoutMs * 1_000_000
    while !condition() {
        if nowNanos() >= deadline { return false }
        usleep(5000)
    }
    return true
}

/// This process's descriptors: number and what it points at ("socket:[1234]",
/// "anon_inode:[eventpoll]"), from /proc/self/fd.
func openDescriptors() -> [Int32: String] {
    guard let directory = opendir("/proc/self/fd") else { return [:] }
    let directoryFd = dirfd(directory)
    var descriptors: [Int32: String] = [:]
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard let fd = Int32(name), fd != directoryFd else { continue }
        var target = [CChar](repeating: 0, count: 256)
        let length = readlink("/proc/self/fd/\(name)", &target, target.count - 1)
        if length > 0 {
            descriptors[fd] = String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
    closedir(directory)
    return descriptors
}

/// The text of /proc/self/fdinfo/`fd`, or nil when `fd` is not open.
func descriptorInfo(_ fd: Int32) -> String? {
    guard let file = fopen("/proc/self/fdinfo/\(fd)", "r") else { return nil }
    defer { fclose(file) }
    var text = ""
    var line = [CChar](repeating: 0, count: 512)
    while fgets(&line, Int32(line.count), file) != nil {
        text += String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return text
}

/// An epoll set of this process and the eventfd it watches, told apart from
/// every other one by what they are: the epoll set by the socket inodes it
/// watches, the eventfd by its `eventfd-id`. Descriptor numbers alone would
/// not do: tests of other targets run alongside, in this process, and reuse
/// the numbers at once.
struct PollSetIdentity: Equatable {
    var epollFd: Int32
    var watchedInodes: Set<String>
    var eventFd: Int32
    var eventFdID: String

    /// The epoll set that watches one of `socketTargets` ("socket:[inode]"), and its eventfd.
    static func find(watchingAnyOf socketTargets: Set<String>) -> PollSetIdentity? {
        let inodes = Set(socketTargets.compactMap { target -> String? in
            guard let number = UInt64(target.dropFirst("socket:[".count).dropLast()) else { return nil }
            return String(number, radix: 16)
        })
        let descriptors = openDescriptors()
        for (fd, target) in descriptors where target == "anon_inode:[eventpoll]" {
            guard let info = descriptorInfo(fd) else { continue }
            let watched = watchedEntries(info)
            guard !inodes.isDisjoint(with: watched.map(\.inode)) else { continue }
            for entry in watched where descriptors[entry.fd] == "anon_inode:[eventfd]" {
                guard let id = eventFdID(entry.fd) else { continue }
                return PollSetIdentity(epollFd: fd, watchedInodes: Set(watched.map(\.inode)), eventFd: entry.fd,
                                       eventFdID: id)
            }
        }
        return nil
    }

    /// Neither the epoll set nor the eventfd is open any more (their numbers
    /// may be, for something else).
    var isClosed: Bool {
        let epollStillOpen = descriptorInfo(epollFd).map {
            !Set(Self.watchedEntries($0).map(\.inode)).isDisjoint(with: watchedInodes)
        } ?? false
        return !epollStillOpen && Self.eventFdID(eventFd) != eventFdID
    }

    private static func watchedEntries(_ info: String) -> [(fd: Int32, inode: String)] {
        info.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("tfd:") else { return nil }
            let fields = line.split(separator: " ")
            guard fields.count > 1, let fd = Int32(fields[1]),
                  let inode = fields.first(where: { $0.hasPrefix("ino:") })?.dropFirst(4) else { return nil }
            return (fd, String(inode))
        }
    }

    private static func eventFdID(_ fd: Int32) -> String? {
        descriptorInfo(fd)?.split(separator: "\n").first { $0.hasPrefix("eventfd-id:") }.map(String.init)
    }
}

/// "socket:[inode]" of every TCP socket (IPv4 or IPv6) with one of `ports` as its local
/// or remote port, from /proc/self/net/tcp{,6} (each read once: with many sockets in
/// TIME_WAIT on the machine they are long).
func tcpSocketTargets(ports: [UInt16]) -> Set<String> {
    let suffixes = Set(ports.map { port in
        let portHex = String(port, radix: 16, uppercase: true)
        return ":" + String(repeating: "0", count: 4 - portHex.count) + portHex
    })
    func hasPort(_ address: Substring) -> Bool {
        guard let colon = address.lastIndex(of: ":") else { return false }
        return suffixes.contains(String(address[colon...]))
    }
    var targets: Set<String> = []
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        guard let file = fopen(table, "r") else { continue }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), file) != nil {
            let fields = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .split(separator: " ")
            guard fields.count > 9, fields[9] != "0", hasPort(fields[1]) || hasPort(fields[2]) else { continue }
            targets.insert("socket:[\(fields[9])]")
        }
    }
    return targets
}

/// Deterministic bytes with '\n' sprinkled in, so line counts and digests mean something.
func patternBytes(count: Int, seed: UInt64 = 0x9e37_79b9_7f4a_7c15) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 56)
    }
}

func startedServer(_ mode: TestServerMode) throws -> TestServer {
    let server = TestServer(address: try LoadAddress(parsing: "127.0.0.1:0"), mode: mode)
    try server.start()
    return server
}
