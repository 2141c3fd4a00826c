import Glibc
import Testing
import TestSupport
@testable import Ring

// Tests against the real kernel. They need io_uring (enabled on the test
// hosts); where a sysctl or seccomp profile forbids it they are skipped, not passed.
@Suite("RingTests.IOUring", .enabled(if: IOUringProbe.available, "io_uring is not available here"))
struct IOUringTests {
    @Test("a ring is set up in the best mode this kernel takes, or the one asked for")
    func setupModes() throws {
        let ring = try Ring(entries: 64, completionEntries: 256)
        #expect(ring.submissionEntries >= 64)
        #expect(ring.completionEntriesGranted >= 256)
        #expect([Ring.SetupMode.deferTaskrun, .coopTaskrun, .plain].contains(ring.setupMode))
        let plain = try Ring(entries: 8, completionEntries: 16, preferred: .plain)
        #expect(plain.setupMode == .plain)
        let coop = try Ring(entries: 8, completionEntries: 16, preferred: .coopTaskrun)
        #expect(coop.setupMode == .coopTaskrun || coop.setupMode == .plain)
    }

    @Test("nops come back with their tags, reaped in batches of reapBatchMax")
    func nopTags() throws {
        let ring = try Ring(entries: 32, completionEntries: 64, reapBatchMax: 4)
        var rng = SeededGenerator(seed: 5)
        let tags = (0..<10).map { _ in CompletionTag(rawValue: rng.next()) }
        for tag in tags { ring.prepareNop(tag: tag) }
        try ring.submitAndWait(count: 10)
        var batches: [Int] = []
        var seen: [CompletionTag] = []
        while true {
            let count = ring.reap()
            if count == 0 { break }
            batches.append(count)
            for index in 0..<count {
                let completion = ring.completion(at: index)
                #expect(completion.result == 0)
                seen.append(completion.tag)
            }
        }
        #expect(batches == [4, 4, 2])
        #expect(seen == tags, "nops complete in order, each with its own tag")
    }

    @Test("preparing more SQEs than the SQ holds flushes instead of failing")
    func fullSubmissionQueue() throws {
        let ring = try Ring(entries: 4, completionEntries: 64)
        #expect(ring.submissionEntries == 4)
        for index in 0..<UInt64(25) { ring.prepareNop(tag: CompletionTag(rawValue: 1_000 + index)) }
        let completions = try reap(ring, count: 25)
        #expect(completions.map(\.tag.rawValue).sorted() == (0..<UInt64(25)).map { 1_000 + $0 })
    }

    @Test("submitAndWait with a timeout returns without completions when nothing happens")
    func waitTimesOut() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        let started = monotonicMs()
        try ring.submitAndWait(count: 1, timeoutNanoseconds: 30_000_000)
        let elapsed = monotonicMs() - started
        #expect(ring.reap() == 0)
        #expect(elapsed >= 20 && elapsed < 1_000, "waited \(elapsed) ms")
    }

    @Test("a timeout request completes with -ETIME once its duration has passed, and wakes a wait without one")
    func timeoutRequest() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        let started = monotonicMs()
        ring.prepareTimeout(nanoseconds: 30_000_000, tag: CompletionTag(rawValue: 77))
        try ring.submitAndWait(count: 1)
        let elapsed = monotonicMs() - started
        #expect(ring.reap() == 1)
        #expect(ring.completion(at: 0).tag.rawValue == 77)
        #expect(ring.completion(at: 0).result == -ETIME)
        #expect(elapsed >= 20 && elapsed < 1_000, "waited \(elapsed) ms")
    }

    @Test("send and recv through the ring on a socket pair, into plain buffers")
    func sendRecv() throws {
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        let message = Array("through the ring".utf8)
        let inbox = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 8)
        defer { inbox.deallocate() }
        let sendTag = CompletionTag(kind: 4, leg: 1, generation: 9, session: 3)
        let recvTag = CompletionTag(kind: 2, leg: 0, generation: 9, session: 3)
        ring.prepareRecv(fd: b, into: inbox, length: 256, tag: recvTag)
        message.withUnsafeBytes { ring.prepareSend(fd: a, from: $0.baseAddress!, length: $0.count, tag: sendTag) }
        let completions = try reap(ring, count: 2)
        let send = try #require(completions.first { $0.tag == sendTag })
        let recv = try #require(completions.first { $0.tag == recvTag })
        #expect(send.result == Int32(message.count))
        #expect(recv.result == Int32(message.count))
        #expect(recv.selectedBuffer == nil)
        #expect(Array(UnsafeRawBufferPointer(start: inbox, count: Int(recv.result))) == message)
    }

    @Test("a gathered send (sendmsg over several iovec entries) sends them in order, as one operation")
    func gatheredSend() throws {
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        #expect(ring.supportsSendMessage, "IORING_OP_SENDMSG is in every kernel since 5.3")
        let parts = ["one ", "two, ", "three"].map { Array($0.utf8) }
        let buffers = parts.map { part -> UnsafeMutableRawPointer in
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: part.count, alignment: 8)
            part.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: part.count) }
            return buffer
        }
        defer { buffers.forEach { $0.deallocate() } }
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: parts.count)
        defer { vectors.deallocate() }
        for index in parts.indices { vectors[index] = iovec(iov_base: buffers[index], iov_len: parts[index].count) }
        let message = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
        defer { message.deallocate() }
        message.pointee = msghdr()
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = parts.count
        let sendTag = CompletionTag(kind: 4, leg: 2, generation: 1, session: 7)
        ring.prepareSendMessage(fd: a, message: message, tag: sendTag)
        let completions = try reap(ring, count: 1)
        #expect(completions.first?.tag == sendTag)
        #expect(completions.first?.result == Int32(parts.joined().count))
        var inbox = [UInt8](repeating: 0, count: 64)
        let count = inbox.withUnsafeMutableBytes { recv(b, $0.baseAddress, $0.count, 0) }
        #expect(Array(inbox[0..<max(0, count)]) == Array(parts.joined()))
    }

    @Test("a buffer-select recv picks a provided slot that holds the bytes; a slot is lent again after provide")
    func providedBuffers() throws {
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        let pool = try BufferPool(slotSize: 4_096, slotCount: 4)
        let provided = try ProvidedBuffers(ring: ring, pool: pool, group: 3)
        #expect(provided.lent == 4 && provided.group == 3 && provided.entries == 4)
        var slots: Set<UInt32> = []
        for round in 0..<6 {
            let message = Array("round \(round) of the provided buffers".utf8)
            writeAll(a, message)
            let tag = CompletionTag(kind: 2, leg: 0, generation: 1, session: UInt32(round))
            ring.prepareRecv(fd: b, group: 3, length: pool.slotSize, tag: tag)
            let completion = try #require(try reap(ring, count: 1).first)
            #expect(completion.tag == tag)
            #expect(completion.result == Int32(message.count))
            let slot = try #require(completion.selectedBuffer)
            #expect(slot < 4)
            slots.insert(slot)
            provided.taken(slot)
            #expect(provided.lent == 3)
            #expect(Array(UnsafeRawBufferPointer(start: pool.pointer(slot), count: message.count)) == message)
            provided.provide(slot)
            provided.commit()
            #expect(provided.lent == 4)
        }
        #expect(!slots.isEmpty)
    }

    /// The pool grows segment by segment, only when no freed slot is left,
    /// and each new segment is registered as one fixed buffer; the kernel is
    /// lent only a window of slots, the most recently freed first.
    @Test("provided buffers lend a window, reuse freed slots first and grow the pool a segment at a time")
    func providedBuffersGrow() throws {
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        // 512 KiB slots: two to a 1 MiB segment; four segments.
        let pool = try BufferPool(slotSize: 512 * 1024, slotCount: 8)
        #expect(pool.segmentSlots == 2 && pool.segmentCount == 4)
        let provided = try ProvidedBuffers(ring: ring, pool: pool, windowSlots: 2, registerSegments: true)
        #expect(provided.lent == 2 && provided.grownSlots == 2 && provided.available == 8)
        func receive(_ round: Int) throws -> UInt32 {
            try receiveByteIntoProvidedSlot(ring, provided, slotSize: pool.slotSize, writer: a, reader: b, round: round)
        }
        #expect(try receive(0) == 0)
        provided.commit()
        #expect(provided.grownSlots == 4, "no freed slot: the next segment")
        #expect(try receive(1) == 1)
        provided.commit()
        #expect(try receive(2) == 2)
        provided.provide(0)
        provided.commit()
        #expect(provided.grownSlots == 4, "slot 0 was freed: no growth")
        #expect(try receive(3) == 3)
        #expect(try receive(4) == 0, "the freed slot, lent again")
        #expect(provided.lent == 0 && provided.available == 8 - 4)
        provided.commit()
        #expect(provided.grownSlots == 6 && provided.lent == 2)
        #expect(provided.growthError == nil)
    }

    @Test("when every slot is taken a buffer-select recv gets -ENOBUFS; the bytes wait for a slot")
    func providedBuffersRunDry() throws {
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        let pool = try BufferPool(slotSize: 4_096, slotCount: 2)
        let provided = try ProvidedBuffers(ring: ring, pool: pool, group: 0)
        var taken: [UInt32] = []
        for round in 0..<2 {
            taken.append(try receiveByteIntoProvidedSlot(ring, provided, slotSize: pool.slotSize, writer: a, reader: b, round: round))
        }
        #expect(Set(taken) == [0, 1])
        #expect(provided.lent == 0)
        let last = Array("waiting for a slot".utf8)
        writeAll(a, last)
        ring.prepareRecv(fd: b, group: 0, length: pool.slotSize, tag: CompletionTag(rawValue: 7))
        let dry = try #require(try reap(ring, count: 1).first)
        #expect(dry.tag.rawValue == 7)
        #expect(dry.result == -ENOBUFS)
        #expect(dry.selectedBuffer == nil)
        provided.provide(taken[1])
        provided.commit()
        ring.prepareRecv(fd: b, group: 0, length: pool.slotSize, tag: CompletionTag(rawValue: 8))
        let again = try #require(try reap(ring, count: 1).first)
        #expect(again.result == Int32(last.count))
        #expect(again.selectedBuffer == taken[1])
        #expect(Array(UnsafeRawBufferPointer(start: pool.pointer(taken[1]), count: last.count)) == last)
    }

    @Test("registerBuffers pins the pool (as root); a zero-copy send from a slot completes twice",
          .enabled(if: IOUringProbe.underCI || getuid() == 0, "registering 512 KiB needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK"))
    func registeredBuffersAndZeroCopy() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        let pool = try BufferPool(slotSize: 64 * 1_024, slotCount: 8)
        try ring.registerBuffers(pool)
        let (client, server) = try tcpPair()
        defer { close(client); close(server) }
        let message = Array("zero copy from slot 5".utf8)
        message.withUnsafeBytes { pool.pointer(5).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let tag = CompletionTag(kind: 4, leg: 1, generation: 2, session: 5)
        ring.prepareSendZeroCopy(fd: client, from: pool.pointer(5), length: message.count, bufferIndex: 5, tag: tag)
        let completions = try reap(ring, count: 2)
        #expect(completions.count == 2)
        #expect(completions.allSatisfy { $0.tag == tag })
        let send = try #require(completions.first { !$0.isNotification })
        #expect(send.result == Int32(message.count))
        #expect(send.hasMore, "a notification follows")
        #expect(completions.contains { $0.isNotification && !$0.hasMore })
        #expect(readSome(server, count: 256) == message)
    }

    /// Gathered zero-copy sends, from a registered buffer where the kernel
    /// takes one (probed) and from plain pages: both complete twice, and
    /// towards a local socket the notification says the kernel copied.
    @Test("a gathered zero-copy send completes twice, in order, and says the kernel copied towards loopback",
          .enabled(if: IOUringProbe.underCI || getuid() == 0, "registering 512 KiB needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK"))
    func gatheredZeroCopy() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        #expect(ring.supportsZeroCopySend, "SEND_ZC and SENDMSG_ZC are in every kernel since 6.1")
        let pool = try BufferPool(slotSize: 64 * 1_024, slotCount: 8)
        try ring.registerBufferTable(count: 1)
        try ring.registerBuffer(at: 0, base: pool.base, length: pool.byteCount)
        var release = utsname()
        uname(&release)
        let version = withUnsafeBytes(of: release.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let numbers = version.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        let vectoredFixed = ring.probeFixedVectoredZeroCopy()
        let reportsUsage = ring.probeZeroCopyUsageReport()
        if numbers.count == 2 {
            let (major, minor) = (numbers[0], numbers[1])
            #expect(vectoredFixed == (major > 6 || (major == 6 && minor >= 15)), "\(version)")
            #expect(reportsUsage == (major > 6 || (major == 6 && minor >= 2)), "\(version)")
        }
        let (client, server) = try tcpPair()
        defer { close(client); close(server) }
        let parts = ["first, ", "then ", "last"].map { Array($0.utf8) }
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: parts.count)
        defer { vectors.deallocate() }
        for (index, part) in parts.enumerated() {
            part.withUnsafeBytes { pool.pointer(UInt32(index * 2)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            vectors[index] = iovec(iov_base: pool.pointer(UInt32(index * 2)), iov_len: part.count)
        }
        let message = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
        defer { message.deallocate() }
        for bufferIndex in vectoredFixed ? [UInt32(0), nil] : [nil] {
            message.pointee = msghdr()
            message.pointee.msg_iov = vectors
            message.pointee.msg_iovlen = parts.count
            let tag = CompletionTag(kind: 0xE0, leg: 0, generation: 0, session: 3)
            ring.prepareSendMessageZeroCopy(fd: client, message: message, bufferIndex: bufferIndex, tag: tag)
            let completions = try reap(ring, count: 2)
            #expect(completions.count == 2 && completions.allSatisfy { $0.tag == tag })
            #expect(completions.first.map { !$0.isNotification && $0.hasMore } == true, "the result comes first")
            #expect(completions.first?.result == Int32(parts.joined().count))
            #expect(completions.last.map { $0.isNotification && $0.zeroCopyCopied == reportsUsage } == true,
                    "loopback copies, and says so where the kernel reports it")
            #expect(readSome(server, count: 256) == Array(parts.joined()))
        }
    }

    @Test("cancel by fd and by tag end recvs in flight with -ECANCELED")
    func cancel() throws {
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        let inbox = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { inbox.deallocate() }
        let recvTag = CompletionTag(rawValue: 11)
        let cancelTag = CompletionTag(rawValue: 12)
        ring.prepareRecv(fd: b, into: inbox, length: 64, tag: recvTag)
        ring.submit()
        ring.prepareCancel(fd: b, tag: cancelTag)
        let byFD = try reap(ring, count: 2)
        #expect(byFD.first { $0.tag == recvTag }?.result == -ECANCELED)
        #expect(byFD.first { $0.tag == cancelTag }?.result == 1, "one operation was cancelled")

        let second = CompletionTag(rawValue: 21)
        ring.prepareRecv(fd: a, into: inbox, length: 64, tag: second)
        ring.submit()
        ring.prepareCancel(target: second, tag: CompletionTag(rawValue: 22))
        let byTag = try reap(ring, count: 2)
        #expect(byTag.first { $0.tag == second }?.result == -ECANCELED)
        #expect(byTag.first { $0.tag.rawValue == 22 }?.result == 0)
    }

    @Test("shutdown through the ring makes the peer read EOF; close through the ring posts no completion")
    func shutdownAndClose() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        let (a, b) = try unixStreamPair()
        defer { close(a); close(b) }
        ring.prepareShutdown(fd: a, how: Int32(SHUT_WR), tag: CompletionTag(rawValue: 31))
        let shutdown = try #require(try reap(ring, count: 1).first)
        #expect(shutdown.tag.rawValue == 31 && shutdown.result == 0)
        var byte: UInt8 = 0
        #expect(read(b, &byte, 1) == 0, "EOF after the peer's shutdown")
        writeAll(b, [42])
        #expect(read(a, &byte, 1) == 1 && byte == 42, "the other direction still works")

        // Closing through the ring: seen from the peer, which reads EOF. (Tests run
        // in parallel, so the fd number itself may be reused at once: never probe it.)
        let (c, d) = try unixStreamPair()
        defer { close(d) }
        ring.prepareClose(fd: c, tag: CompletionTag(rawValue: 32))
        try ring.submitAndWait(count: 1, timeoutNanoseconds: 30_000_000)
        #expect(ring.reap() == 0, "a successful close is skipped")
        #expect(readSome(d, count: 8).isEmpty)
        #expect(read(d, &byte, 1) == 0, "the peer of a closed socket reads EOF")
        // A failing close does post a completion (a number no process can have open).
        ring.prepareClose(fd: 0x7FFF_FFF0, tag: CompletionTag(rawValue: 33))
        let failed = try #require(try reap(ring, count: 1).first)
        #expect(failed.tag.rawValue == 33 && failed.result == -EBADF)
    }

    @Test("connect with a linked timeout: success cancels the timeout, a refusal is reported")
    func connectOutcomes() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        let timeout = RingTimeout(milliseconds: 2_000)
        let listener = try loopbackListener()
        defer { close(listener.fd) }
        let fd = try tcpSocket()
        defer { close(fd) }
        var address = loopbackAddress(port: listener.port)
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                ring.prepareConnect(fd: fd, address: $0, length: socklen_t(MemoryLayout<sockaddr_in>.size),
                                    tag: CompletionTag(rawValue: 41), timeout: timeout,
                                    timeoutTag: CompletionTag(rawValue: 42))
            }
            ring.submit()
        }
        let connected = try reap(ring, count: 2)
        #expect(connected.first { $0.tag.rawValue == 41 }?.result == 0)
        #expect(connected.first { $0.tag.rawValue == 42 }?.result == -ECANCELED)

        // A port nobody listens on: bind one, read its number, close it.
        let unused = try loopbackListener()
        close(unused.fd)
        let refusedFD = try tcpSocket()
        defer { close(refusedFD) }
        var refusedAddress = loopbackAddress(port: unused.port)
        withUnsafePointer(to: &refusedAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                ring.prepareConnect(fd: refusedFD, address: $0, length: socklen_t(MemoryLayout<sockaddr_in>.size),
                                    tag: CompletionTag(rawValue: 43), timeout: nil,
                                    timeoutTag: CompletionTag(rawValue: 44))
            }
            ring.submit()
        }
        let refused = try reap(ring, count: 1)
        #expect(refused.map(\.tag.rawValue) == [43])
        #expect(refused.first?.result == -ECONNREFUSED)
    }

    @Test("a connect that gets no answer is cancelled by its linked timeout")
    func connectTimesOut() throws {
        // A listener with a full accept queue drops SYNs: the connect hangs.
        let listener = try loopbackListener(queueLength: 0)
        defer { close(listener.fd) }
        let filler = try tcpSocket(nonBlocking: true)
        defer { close(filler) }
        plainConnect(filler, port: listener.port)
        var poller = pollfd(fd: filler, events: Int16(POLLOUT), revents: 0)
        #expect(poll(&poller, 1, 1_000) == 1, "the first connection fills the queue")

        let ring = try Ring(entries: 8, completionEntries: 16)
        let timeout = RingTimeout(milliseconds: 50)
        let fd = try tcpSocket()
        defer { close(fd) }
        var address = loopbackAddress(port: listener.port)
        let started = monotonicMs()
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                ring.prepareConnect(fd: fd, address: $0, length: socklen_t(MemoryLayout<sockaddr_in>.size),
                                    tag: CompletionTag(rawValue: 51), timeout: timeout,
                                    timeoutTag: CompletionTag(rawValue: 52))
            }
            ring.submit()
        }
        let completions = try reap(ring, count: 2)
        let elapsed = monotonicMs() - started
        #expect(completions.first { $0.tag.rawValue == 51 }?.result == -ECANCELED)
        #expect(completions.first { $0.tag.rawValue == 52 }?.result == -ETIME)
        #expect(elapsed >= 40 && elapsed < 1_500, "took \(elapsed) ms")
    }

    /// The worker's main and mirror sockets are non-blocking (`Sockets.openStream`)
    /// and the session treats any negative result as fatal: the ring must wait
    /// for data and for the handshake, never surface -EAGAIN or -EINPROGRESS.
    @Test("on non-blocking sockets a recv waits for data and a connect completes with 0")
    func nonBlockingSockets() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        var fds: [Int32] = [-1, -1]
        let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        #expect(socketpair(AF_UNIX, flags, 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let inbox = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { inbox.deallocate() }
        ring.prepareRecv(fd: fds[0], into: inbox, length: 64, tag: CompletionTag(rawValue: 71))
        try ring.submitAndWait(count: 1, timeoutNanoseconds: 30_000_000)
        #expect(ring.reap() == 0, "no data yet: the recv waits instead of failing with -EAGAIN")
        writeAll(fds[1], [1, 2, 3])
        let received = try #require(try reap(ring, count: 1).first)
        #expect(received.tag.rawValue == 71 && received.result == 3)

        let listener = try loopbackListener()
        defer { close(listener.fd) }
        let fd = try tcpSocket(nonBlocking: true)
        defer { close(fd) }
        var address = loopbackAddress(port: listener.port)
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                ring.prepareConnect(fd: fd, address: $0, length: socklen_t(MemoryLayout<sockaddr_in>.size),
                                    tag: CompletionTag(rawValue: 72), timeout: nil,
                                    timeoutTag: CompletionTag(rawValue: 73))
            }
            ring.submit()
        }
        let connected = try reap(ring, count: 1)
        #expect(connected.map(\.tag.rawValue) == [72])
        #expect(connected.first?.result == 0)
    }

    @Test("multishot accept: one SQE, a completion per connection while hasMore")
    func multishotAccept() throws {
        let listener = try loopbackListener()
        defer { close(listener.fd) }
        let ring = try Ring(entries: 8, completionEntries: 16)
        let acceptTag = CompletionTag(kind: 1, leg: 0, generation: 0, session: 0)
        ring.prepareAcceptMultishot(fd: listener.fd, tag: acceptTag)
        ring.submit()
        let clients = try (0..<3).map { _ in try tcpSocket() }
        defer { clients.forEach { close($0) } }
        for client in clients { #expect(plainConnect(client, port: listener.port) == 0) }
        let accepted = try reap(ring, count: 3)
        defer { accepted.filter { $0.result >= 0 }.forEach { close($0.result) } }
        #expect(accepted.count == 3)
        #expect(accepted.allSatisfy { $0.tag == acceptTag && $0.result >= 0 && $0.hasMore })
        #expect(Set(accepted.map(\.result)).count == 3)
        ring.prepareCancel(target: acceptTag, tag: CompletionTag(rawValue: 61))
        let ended = try reap(ring, count: 2)
        #expect(ended.contains { $0.tag == acceptTag && $0.result == -ECANCELED && !$0.hasMore })
    }
}

@Suite("RingTests.RegisteredBufferLimit", .enabled(if: IOUringProbe.available, "io_uring is not available here"))
struct RegisteredBufferLimitTests {
    /// The kernel's IORING_MAX_REG_BUFFERS (1 << 14): a pool of more slots
    /// cannot be registered (see ParserTests' pool-slots test). The check
    /// happens before any page is pinned, so this costs no locked memory.
    @Test("registerBuffers of more than 16384 slots fails with EINVAL, as a RingError")
    func tooManySlots() throws {
        let ring = try Ring(entries: 8, completionEntries: 16)
        let pool = try BufferPool(slotSize: 4_096, slotCount: 16_385)
        let error = #expect(throws: RingError.self) { try ring.registerBuffers(pool) }
        #expect(error?.errno == EINVAL)
        #expect(error?.description.contains("io_uring_register_buffers") == true)
    }
}
