import CLiburing
import Foundation
import Glibc
import Platform
import Testing
import TestSupport
@testable import Ring

/// Whether this host lets us create an io_uring (not when io_uring is
/// disabled by sysctl or a seccomp profile): the io_uring tests need one.
/// Asked of liburing directly, not of `Ring`, the code under test: a bug
/// there must fail the ring tests, not skip them. Under `CI=true` the tests
/// always run, so that a CI host without io_uring fails instead of passing.
enum IOUringProbe {
    /// Under `CI=true` a test that needs something of the host (io_uring,
    /// root for locked memory) runs and fails without it, never skips.
    static let underCI = ProcessInfo.processInfo.environment["CI"] == "true"

    static let available: Bool = {
        if underCI { return true }
        var ring = io_uring()
        guard io_uring_queue_init(8, &ring, 0) == 0 else { return false }
        io_uring_queue_exit(&ring)
        return true
    }()
}

/// Reaps completions until `count` have arrived or `timeoutMs` passed.
func reap(_ ring: Ring, count: Int, timeoutMs: Int = 2_000) throws -> [Completion] {
    var completions: [Completion] = []
    let deadline = monotonicMs() + UInt64(timeoutMs)
    while completions.count < count && monotonicMs() < deadline {
        try ring.submitAndWait(count: UInt32(count - completions.count), timeoutNanoseconds: 50_000_000)
        let ready = ring.reap()
        for index in 0..<ready { completions.append(ring.completion(at: index)) }
    }
    return completions
}

func monotonicMs() -> UInt64 { MonotonicClock.nowMs() }

/// A connected AF_UNIX stream pair.
func unixStreamPair() throws -> (Int32, Int32) {
    var fds: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
        throw RingError("socketpair", errno: errno)
    }
    return (fds[0], fds[1])
}

func loopbackAddress(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return address
}

/// A TCP listener on 127.0.0.1 and an ephemeral port.
func loopbackListener(queueLength: Int32 = 16) throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw RingError("socket", errno: errno) }
    var address = loopbackAddress(port: 0)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, queueLength) == 0 else {
        let code = errno
        close(fd)
        throw RingError("bind/listen", errno: code)
    }
    return (fd, try localPort(fd))
}

func localPort(_ fd: Int32) throws -> UInt16 {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let result = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard result == 0 else { throw RingError("getsockname", errno: errno) }
    return UInt16(bigEndian: address.sin_port)
}

func tcpSocket(nonBlocking: Bool = false) throws -> Int32 {
    var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
    let fd = socket(AF_INET, type, 0)
    guard fd >= 0 else { throw RingError("socket", errno: errno) }
    return fd
}

/// A plain blocking connect; returns the result of connect(2) (0 or -1).
@discardableResult
func plainConnect(_ fd: Int32, port: UInt16) -> Int32 {
    var address = loopbackAddress(port: port)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// A connected TCP pair over loopback: (client, server side).
func tcpPair() throws -> (Int32, Int32) {
    let listener = try loopbackListener()
    defer { close(listener.fd) }
    let client = try tcpSocket()
    guard plainConnect(client, port: listener.port) == 0 else {
        let code = errno
        close(client)
        throw RingError("connect", errno: code)
    }
    let server = accept(listener.fd, nil, nil)
    guard server >= 0 else {
        let code = errno
        close(client)
        throw RingError("accept", errno: code)
    }
    return (client, server)
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    #expect(written == bytes.count)
}

/// Reads what is ready (up to `count` bytes), waiting at most 1 s for the first.
func readSome(_ fd: Int32, count: Int) -> [UInt8] {
    var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&poller, 1, 1_000) == 1 else { return [] }
    var buffer = [UInt8](repeating: 0, count: count)
    let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, count) }
    return got > 0 ? Array(buffer[..<got]) : []
}


/// Writes one byte to `writer`, receives it from `reader` into a slot of
/// buffer group 0 that the kernel picks, and tells `provided` it was taken.
func receiveByteIntoProvidedSlot(_ ring: Ring, _ provided: ProvidedBuffers, slotSize: Int, writer: Int32, reader: Int32,
                                 round: Int) throws -> UInt32 {
    writeAll(writer, [UInt8(truncatingIfNeeded: round)])
    ring.prepareRecv(fd: reader, group: 0, length: slotSize, tag: CompletionTag(rawValue: UInt64(round)))
    let completion = try #require(try reap(ring, count: 1).first)
    #expect(completion.result == 1)
    let slot = try #require(completion.selectedBuffer)
    provided.taken(slot)
    return slot
}
