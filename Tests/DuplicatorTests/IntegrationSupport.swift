import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Duplicator
import LoadTools
import Platform

// Shared helpers of the integration tests: real loopback sockets, a real
// proxy with real io_uring, and peers that misbehave on purpose.

extension SeededGenerator {
    /// `count` pseudo-random bytes: a payload a failure can replay.
    mutating func bytes(_ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            var offset = 0
            while offset < count {
                var word = next()
                let take = min(8, count - offset)
                withUnsafeBytes(of: &word) { raw.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: take) }
                offset += take
            }
        }
        return result
    }
}

func monotonicSeconds() -> Double { MonotonicClock.nowSeconds() }

/// A thread for a test's servers and clients (every signal blocked, as the proxy's own).
func spawnThread(_ body: @escaping @Sendable () -> Void) throws -> NativeThread {
    try NativeThread.start(name: "test", body)
}

/// The same, for a thread nobody joins.
func detachedThread(_ body: @escaping @Sendable () -> Void) throws {
    try spawnThread(body).detach()
}

/// Programs the tests run that this project did not write: the real peers
/// and system tools. Found as `.ci/run` finds them, on PATH and then in the
/// sbin folders (where Debian puts daemons and tools a user's PATH may not
/// reach). A test that needs one is skipped, with the reason, only outside
/// CI: under `CI=true` it runs and fails when the program is missing, so that
/// a broken install can never pass as a skip.
enum Peers {
    static let underCI = ProcessInfo.processInfo.environment["CI"] == "true"

    static func path(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let folders = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/sbin", "/sbin"]
        return folders.lazy.map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// For `.enabled(if:)`: every program is installed, or this is CI.
    static func runnable(_ names: String...) -> Bool {
        underCI || names.allSatisfy { path($0) != nil }
    }

    /// The program's path, or a failure that names it.
    static func require(_ name: String) throws -> String {
        guard let found = path(name) else { throw TestFailure("\(name) is not installed (make test-deps installs it)") }
        return found
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// How a client's exchange ended.
enum StreamEnd: Equatable { case eof, reset, timeout }

/// A non-blocking loopback client socket driven with poll(2).
final class TestConnection {
    let fd: Int32

    /// The descriptor is assigned last: when connecting fails, `connect`
    /// has closed it and this object never existed. (A class whose init
    /// throws after every property is set still runs its deinit: closing on
    /// failure there as well closed the descriptor twice, and the second
    /// close hit whatever another test had opened under that number in the
    /// meantime.)
    init(port: UInt16, timeoutSeconds: Double = 5) throws {
        fd = try Self.connect(port: port, timeoutSeconds: timeoutSeconds)
    }

    private static func connect(port: UInt16, timeoutSeconds: Double) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 && errno != EINPROGRESS {
            let error = errno
            Glibc.close(fd)
            throw TestFailure("connect to \(port): errno \(error)")
        }
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard Glibc.poll(&entry, 1, Int32(timeoutSeconds * 1000)) > 0 else {
            Glibc.close(fd)
            throw TestFailure("connect to \(port) timed out")
        }
        var error: Int32 = 0
        var length = socklen_t(4)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
        guard error == 0 else {
            Glibc.close(fd)
            throw TestFailure("connect to \(port): errno \(error)")
        }
        return fd
    }

    deinit { Glibc.close(fd) }

    func poll(events: Int16, timeoutSeconds: Double) -> Bool {
        var entry = pollfd(fd: fd, events: events, revents: 0)
        return Glibc.poll(&entry, 1, Int32(timeoutSeconds * 1000)) > 0
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Resets the connection on close (SO_LINGER 0).
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    /// Sends `payload` in pieces of random size (up to `pieceMax`) while
    /// reading whatever comes back, then shuts down its write side if asked
    /// and reads until EOF, reset, or the deadline. Full duplex, so an echo
    /// peer's back-pressure cannot deadlock it.
    func exchange(_ payload: [UInt8], pieceMax: Int = 65536, seed: UInt64 = 1, shutdownAfterSending: Bool = true,
                  timeoutSeconds: Double = 30, expectBytes: Int? = nil) -> (received: [UInt8], end: StreamEnd) {
        var generator = SeededGenerator(seed: seed)
        var received: [UInt8] = []
        received.reserveCapacity(expectBytes ?? payload.count)
        var offset = 0
        var shutDown = false
        let deadline = monotonicSeconds() + timeoutSeconds
        var buffer = [UInt8](repeating: 0, count: 65536)
        while monotonicSeconds() < deadline {
            if offset == payload.count && shutdownAfterSending && !shutDown {
                shutdownWrite()
                shutDown = true
            }
            if let expectBytes, received.count >= expectBytes, offset == payload.count { return (received, .eof) }
            var entry = pollfd(fd: fd, events: Int16(POLLIN) | (offset < payload.count ? Int16(POLLOUT) : 0), revents: 0)
            guard Glibc.poll(&entry, 1, 50) >= 0 else { continue }
            if entry.revents & Int16(POLLOUT) != 0 && offset < payload.count {
                let piece = min(payload.count - offset, Int.random(in: 1...pieceMax, using: &generator))
                let sent = payload.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, piece, Int32(MSG_NOSIGNAL)) }
                if sent > 0 { offset += sent } else if sent < 0 && errno != EAGAIN { return (received, .reset) }
            }
            if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count > 0 {
                    received.append(contentsOf: buffer[0..<count])
                } else if count == 0 {
                    return (received, .eof)
                } else if errno != EAGAIN {
                    return (received, .reset)
                }
            }
        }
        return (received, .timeout)
    }
}

/// A loopback listener whose connections go to a handler on a thread of its
/// own, polled so that `stop()` is seen within 20 ms: what the tests' own
/// servers (fault servers, answering mirrors) have in common.
final class LoopbackAcceptLoop: Sendable {
    let port: UInt16
    private let listener: Int32
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    init(queueLength: Int32 = 128) throws {
        (listener, port) = try loopbackListener(queueLength: queueLength)
    }

    /// Accepts until `stop()`, handing each connection to `handle` on the loop's thread.
    func start(_ handle: @escaping @Sendable (Int32) -> Void) throws {
        try detachedThread { [self] in
            defer { finished.store(true, ordering: .releasing) }
            while !stopping.load(ordering: .relaxed) {
                var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&entry, 1, 20) > 0 else { continue }
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else { continue }
                handle(fd)
            }
        }
    }

    /// Stops accepting, waits for the loop to end, and closes the listener.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .acquiring) { usleep(1000) }
        Glibc.close(listener)
    }
}

/// A server that misbehaves in one chosen way, on its own thread.
final class FaultServer: Sendable {
    enum Behavior: Sendable {
        /// Accepts and closes at once.
        case closeAtOnce
        /// Reads this many bytes, then resets (SO_LINGER 0).
        case resetAfterReading(Int)
        /// Reads `readBytes`, writes `reply`, then closes (or resets).
        case replyThenClose(readBytes: Int, reply: [UInt8], reset: Bool)
        /// Reads at most `bytesPerRead` every `intervalMs` and replies one byte
        /// to each read, until EOF or an error; `received` and `ended` tell.
        case slowReader(bytesPerRead: Int, intervalMs: Int)
    }

    private let acceptLoop: LoopbackAcceptLoop
    var port: UInt16 { acceptLoop.port }
    private let behavior: Behavior
    let connections = Atomic<Int>(0)
    /// `slowReader`: bytes read so far, and whether the stream has ended.
    let received = Atomic<Int>(0)
    let ended = Atomic<Bool>(false)
    /// `replyThenClose`, `resetAfterReading`: bytes read before replying, and
    /// whether that read ended on the peer's EOF (not the 2 s receive
    /// timeout, an error, or the byte count), of the last connection.
    let bytesRead = Atomic<Int>(0)
    let readSawEOF = Atomic<Bool>(false)

    private init(_ behavior: Behavior) throws {
        self.behavior = behavior
        acceptLoop = try LoopbackAcceptLoop()
    }

    /// A fault server already serving on its own thread, one connection at a time.
    static func start(_ behavior: Behavior) throws -> FaultServer {
        let server = try FaultServer(behavior)
        try server.acceptLoop.start { fd in
            server.connections.add(1, ordering: .relaxed)
            server.handle(fd)
        }
        return server
    }

    func stop() { acceptLoop.stop() }

    private func handle(_ fd: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        switch behavior {
        case .closeAtOnce:
            close(fd)
        case .resetAfterReading(let count):
            readAtLeast(fd, count)
            resetAndClose(fd)
        case .replyThenClose(let readBytes, let reply, let reset):
            readAtLeast(fd, readBytes)
            reply.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let sent = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                    if sent <= 0 { break }
                    offset += sent
                }
            }
            if reset { resetAndClose(fd) } else { close(fd) }
        case .slowReader(let bytesPerRead, let intervalMs):
            var buffer = [UInt8](repeating: 0, count: bytesPerRead)
            var reply: UInt8 = 0x21
            while true {
                let read = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if read < 0 && errno == EAGAIN { continue }  // SO_RCVTIMEO: nothing yet
                guard read > 0 else { break }
                received.add(read, ordering: .relaxed)
                _ = send(fd, &reply, 1, Int32(MSG_NOSIGNAL))
                usleep(useconds_t(intervalMs * 1000))
            }
            close(fd)
            ended.store(true, ordering: .releasing)
        }
    }

    private func readAtLeast(_ fd: Int32, _ count: Int) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var total = 0
        var sawEOF = false
        while total < count {
            let read = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - total), 0) }
            if read == 0 { sawEOF = true }
            if read <= 0 { break }
            total += read
        }
        bytesRead.store(total, ordering: .relaxed)
        readSawEOF.store(sawEOF, ordering: .releasing)
    }

    private func resetAndClose(_ fd: Int32) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
    }
}

/// A listening socket on a free port of 127.0.0.1.
func loopbackListener(queueLength: Int32, nonBlocking: Bool = false) throws -> (fd: Int32, port: UInt16) {
    let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
    let listener = socket(AF_INET, flags, 0)
    guard listener >= 0 else { throw TestFailure("socket: errno \(errno)") }
    var on: Int32 = 1
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, 4)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
            guard bind(listener, pointer, length) == 0 else { return -1 }
            return getsockname(listener, pointer, &length)
        }
    }
    guard bound == 0, listen(listener, queueLength) == 0 else {
        let error = errno
        close(listener)
        throw TestFailure("loopback listener: errno \(error)")
    }
    return (listener, UInt16(bigEndian: address.sin_port))
}

/// A loopback port where connects are refused: bound, never listening.
final class RefusingPort {
    let port: UInt16
    let fd: Int32

    init() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
                _ = bind(fd, pointer, length)
                return getsockname(fd, pointer, &length)
            }
        }
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(fd) }
}

/// A LoadTools test server on a free loopback port.
func startServer(_ mode: TestServerMode) throws -> TestServer {
    let server = TestServer(address: LoadAddress(host: "127.0.0.1", port: 0), mode: mode)
    try server.start()
    return server
}

func endpoint(_ port: UInt16) -> Endpoint {
    try! Endpoint(parsing: "127.0.0.1:\(port)", role: .connect)
}

extension Config.Backend {
    /// The backends every promise is tested on: the integration tests take
    /// them as arguments (the same test on each, not a copy).
    static let tested: [Config.Backend] = [.ioUring, .epoll]
}

/// The ways bytes leave the proxy that the exact-stream tests run on:
/// io_uring with its default sends, io_uring with every send zero-copy
/// (`--zerocopy on`), and epoll (which has no zero-copy sends).
struct IOPath: Sendable, CustomTestStringConvertible {
    let backend: Config.Backend
    let zeroCopy: ZeroCopyMode

    static let all = [IOPath(backend: .ioUring, zeroCopy: .auto), IOPath(backend: .ioUring, zeroCopy: .on),
                      IOPath(backend: .epoll, zeroCopy: .auto)]

    var testDescription: String { zeroCopy == .on ? "\(backend.rawValue), zero-copy" : backend.rawValue }
}

/// A proxy on a free loopback port in front of `main` with `mirrors`.
func startProxy(backend: Config.Backend = .auto, main: UInt16, mirrors: [UInt16],
                configure: (inout Config) -> Void = { _ in }) throws -> Proxy {
    var config = Config(listen: try Endpoint(parsing: "127.0.0.1:0", role: .listen),
                        main: endpoint(main), mirrors: mirrors.map(endpoint))
    config.backend = backend
    config.sessionsMax = 2048
    config.mirrorLingerMs = 500
    configure(&config)
    let proxy = try Proxy(config: config)
    try proxy.start()
    if backend != .auto && proxy.backend?.kind != backend {
        proxy.shutdown()
        throw TestFailure("asked for \(backend.rawValue), the proxy runs on \(proxy.backend?.kind.rawValue ?? "nothing")")
    }
    return proxy
}

extension Proxy {
    var port: UInt16 { listenAddress.port }

    /// Stops at once and waits for the workers.
    func shutdown() {
        stop(immediately: true)
        wait()
    }

    func total(_ counter: (WorkerStats) -> UInt64) -> UInt64 { stats.reduce(0) { $0 + counter($1) } }

    func mirrorTotal(_ index: Int, _ counter: (MirrorStats) -> UInt64) -> UInt64 {
        stats.reduce(0) { $0 + counter($1.mirrors[index]) }
    }
}

/// Polls `condition` until it holds or `timeoutSeconds` pass.
@discardableResult
func eventually(timeoutSeconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicSeconds() + timeoutSeconds
    while monotonicSeconds() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Runs `body(i)` for i in 0..<count, each on its own thread, and waits for all.
func concurrently(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) throws {
    let done = Atomic<Int>(0)
    for index in 0..<count {
        try detachedThread {
            body(index)
            done.add(1, ordering: .releasing)
        }
    }
    while done.load(ordering: .acquiring) < count { usleep(1000) }
}

/// `count` sessions at once, each on its own connection to `port` in front
/// of an echo main: session i sends `payload(i)` in pieces of up to
/// `pieceMax` bytes and must get exactly it back, then EOF. One line for each
/// session that did not (empty when all did).
func echoSessions(_ count: Int, port: UInt16, pieceMax: Int = 65536, timeoutSeconds: Double = 30,
                  payload: @escaping @Sendable (Int) -> [UInt8]) throws -> [String] {
    let failures = Mutex<[String]>([])
    try concurrently(count) { index in
        let sent = payload(index)
        do {
            let connection = try TestConnection(port: port)
            let (received, end) = connection.exchange(sent, pieceMax: pieceMax, seed: UInt64(index),
                                                      timeoutSeconds: timeoutSeconds)
            if end != .eof || received != sent {
                failures.withLock { $0.append("session \(index): \(end), \(received.count)/\(sent.count) bytes back") }
            }
        } catch {
            failures.withLock { $0.append("session \(index): \(error)") }
        }
    }
    return failures.withLock { $0 }
}

/// The multiset of streams `payloads` make, as `receivedStreams` reads a server's.
func streamSignatures(_ payloads: [[UInt8]]) -> [StreamSignature: Int] {
    var signatures: [StreamSignature: Int] = [:]
    for payload in payloads { signatures[StreamSignature(payload), default: 0] += 1 }
    return signatures
}

/// (bytes, FNV-1a) of a payload, comparable with a server's ConnectionRecord.
struct StreamSignature: Hashable, CustomStringConvertible {
    let bytes: UInt64
    let digest: UInt64
    init(_ payload: [UInt8]) {
        bytes = UInt64(payload.count)
        digest = FNV1a64.digest(of: payload)
    }
    init(_ record: ConnectionRecord) {
        bytes = record.bytesReceived
        digest = record.receivedDigest
    }
    var description: String { "\(bytes)B/\(String(digest, radix: 16))" }
}

/// The multiset of streams a server received, once every connection has closed.
func receivedStreams(_ server: TestServer, count: Int, timeoutSeconds: Double = 20) -> [StreamSignature: Int] {
    eventually(timeoutSeconds: timeoutSeconds) {
        let records = server.connectionRecords()
        return records.count >= count && records.allSatisfy { $0.peerClosed }
    }
    var result: [StreamSignature: Int] = [:]
    for record in server.connectionRecords() { result[StreamSignature(record), default: 0] += 1 }
    return result
}

/// A free loopback port (bound and released; another process could take it
/// in between, which on a test machine it does not).
func freePort() -> UInt16 {
    let port = RefusingPort().port
    return port
}

/// The `duplicator` binary running as a child process.
final class ProxyProcess {
    let process: Process
    let port: UInt16
    let errorPipe = Pipe()

    /// - Parameter launcher: a program and its arguments to run the binary with (e.g. prlimit).
    init(backend: Config.Backend? = nil, _ arguments: [String], port: UInt16, launcher: [String] = []) throws {
        self.port = port
        process = Process()
        let command = launcher + [try builtBinary("duplicator"), "-l", "127.0.0.1:\(port)"] + arguments
            + (backend.map { ["--backend", $0.rawValue] } ?? [])
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardError = errorPipe
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let up = eventually(timeoutSeconds: 10) { (try? TestConnection(port: port, timeoutSeconds: 1)) != nil }
        guard up else {
            process.terminate()
            throw TestFailure("duplicator did not start listening on \(port)")
        }
    }

    deinit {
        if process.isRunning {
            process.interrupt()
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// The process's open descriptors; nil when /proc cannot tell (the
    /// process is gone), so that a failed read never passes a comparison.
    var descriptorCount: Int? {
        try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/fd").count
    }

    /// The descriptor count once two readings 200 ms apart agree (sessions
    /// closing in the background have finished), or nil after `timeoutSeconds`.
    func settledDescriptorCount(timeoutSeconds: Double = 10) -> Int? {
        var settled: Int?
        _ = eventually(timeoutSeconds: timeoutSeconds) {
            guard let first = descriptorCount else { return false }
            usleep(200_000)
            guard descriptorCount == first else { return false }
            settled = first
            return true
        }
        return settled
    }

    /// User plus system CPU seconds the process has used (nil when /proc cannot tell).
    var cpuSeconds: Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The process's threads now: each one's name and its time on a CPU in
    /// nanoseconds (/proc's comm and schedstat). Empty when the process is gone.
    var threads: [(name: String, runNanos: UInt64)] {
        let tasks = "/proc/\(process.processIdentifier)/task"
        return ((try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []).compactMap { task in
            guard let name = try? String(contentsOfFile: "\(tasks)/\(task)/comm", encoding: .utf8),
                  let stat = try? String(contentsOfFile: "\(tasks)/\(task)/schedstat", encoding: .utf8),
                  let runNanos = stat.split(separator: " ").first.flatMap({ UInt64($0) }) else { return nil }
            return (name.trimmingCharacters(in: .whitespacesAndNewlines), runNanos)
        }
    }

    /// Resident set size in bytes (nil when /proc cannot tell).
    var residentBytes: Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kilobytes * 1024
    }

    /// Sends `signal` and waits for the exit status (nil on timeout).
    func signalAndWait(_ signal: Int32, timeoutSeconds: Double = 15) -> Int32? {
        kill(process.processIdentifier, signal)
        guard eventually(timeoutSeconds: timeoutSeconds, { !process.isRunning }) else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    var standardError: String {
        String(decoding: errorPipe.fileHandleForReading.availableData, as: UTF8.self)
    }
}
