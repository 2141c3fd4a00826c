import CLiburing
import Glibc

/// One io_uring, used by the one thread that created it (`SINGLE_ISSUER`).
///
/// Knows io_uring and nothing of proxies: it hands out SQEs (submitting when
/// the SQ is full), prepares the socket operations the callers need with a
/// `CompletionTag` as user data, submits and waits in batches, and reaps
/// completions in batches with one CQ-head advance per batch.
public final class Ring {
    /// How the ring was set up: the best that this kernel accepted.
    public enum SetupMode: String, Sendable {
        /// `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+): completions are produced
        /// only when this thread waits, so no IPI or task-work interrupts.
        case deferTaskrun = "single-issuer+defer-taskrun"
        /// `COOP_TASKRUN | TASKRUN_FLAG` (5.19+).
        case coopTaskrun = "coop-taskrun"
        case plain
    }

    public static let completionFlagMore = shim_IORING_CQE_F_MORE
    public static let completionFlagNotification = shim_IORING_CQE_F_NOTIF
    /// In a zero-copy notification's result: the kernel copied instead.
    public static let zeroCopyCopiedFlag = shim_IORING_NOTIF_USAGE_ZC_COPIED
    public static let completionFlagBuffer = shim_IORING_CQE_F_BUFFER
    public static let completionBufferShift = shim_IORING_CQE_BUFFER_SHIFT
    /// recv flag: on TCP, discard the bytes instead of copying them out.
    public static let messageTruncate = Int32(MSG_TRUNC)
    public static let sqeFlagLink = shim_IOSQE_IO_LINK
    public static let sqeFlagSkipSuccess = shim_IOSQE_CQE_SKIP_SUCCESS

    /// liburing's state of the ring, in memory of its own that stays put:
    /// C takes it by pointer, and a stored `var` passed `&ring` would have
    /// its exclusive access checked at run time on every SQE and reap.
    @usableFromInline let ring: UnsafeMutablePointer<io_uring>
    public let setupMode: SetupMode
    public let submissionEntries: UInt32
    public let completionEntriesGranted: UInt32
    private let reaped: UnsafeMutablePointer<shim_completion>
    /// The duration of `prepareTimeout`'s request, read by the kernel at submission.
    private let timeoutSpec: UnsafeMutablePointer<__kernel_timespec>
    public let reapBatchMax: Int
    private var registeredBufferCount = 0

    /// - Parameters:
    ///   - entries: SQ size (rounded up to a power of two by the kernel).
    ///   - completionEntries: CQ size; large, so bursts never overflow it.
    ///   - preferred: the best mode to try; lower ones are tried when the
    ///     kernel rejects it with EINVAL (an older kernel).
    /// - Throws: `RingError` with the errno of `io_uring_setup`: ENOSYS (no
    ///   io_uring in this kernel), EPERM (`kernel.io_uring_disabled` or a
    ///   seccomp profile), ENOMEM (locked-memory limit).
    public init(entries: UInt32 = 1024, completionEntries: UInt32 = 8192,
                preferred: SetupMode = .deferTaskrun, reapBatchMax: Int = 512) throws {
        var modes: [SetupMode] = [.deferTaskrun, .coopTaskrun, .plain]
        if let first = modes.firstIndex(of: preferred) { modes.removeFirst(first) }
        var lastError: Int32 = EINVAL
        var chosen: SetupMode?
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        for mode in modes {
            var params = io_uring_params()
            // SUBMIT_ALL (5.18) keeps submitting past a failed SQE; the plain
            // fallback is for kernels older than that, so it goes without.
            params.flags = shim_IORING_SETUP_CQSIZE
            switch mode {
            case .deferTaskrun:
                params.flags |= shim_IORING_SETUP_SUBMIT_ALL | shim_IORING_SETUP_SINGLE_ISSUER | shim_IORING_SETUP_DEFER_TASKRUN
            case .coopTaskrun:
                params.flags |= shim_IORING_SETUP_SUBMIT_ALL | shim_IORING_SETUP_COOP_TASKRUN | shim_IORING_SETUP_TASKRUN_FLAG
            case .plain: break
            }
            params.cq_entries = completionEntries
            let result = io_uring_queue_init_params(entries, ring, &params)
            if result == 0 {
                chosen = mode
                break
            }
            lastError = -result
            // Only EINVAL means "this kernel does not know a flag": try less.
            // Anything else (ENOSYS, EPERM, ENOMEM) is the answer.
            if lastError != EINVAL { break }
        }
        guard let chosen else {
            ring.deallocate()
            throw RingError("io_uring_setup", errno: lastError)
        }
        self.ring = ring
        setupMode = chosen
        submissionEntries = ring.pointee.sq.ring_entries
        completionEntriesGranted = ring.pointee.cq.ring_entries
        self.reapBatchMax = reapBatchMax
        reaped = .allocate(capacity: reapBatchMax)
        timeoutSpec = .allocate(capacity: 1)
        timeoutSpec.initialize(to: __kernel_timespec())
    }

    deinit {
        if registeredBufferCount > 0 { io_uring_unregister_buffers(ring) }
        io_uring_queue_exit(ring)
        ring.deallocate()
        reaped.deallocate()
        timeoutSpec.deallocate()
    }

    /// Registers the ring's own descriptor with this thread's io_uring
    /// context (5.18 and later), so each `io_uring_enter` skips looking the
    /// descriptor up. Only the thread that called it may then enter the ring,
    /// which `SINGLE_ISSUER` asks anyway. Returns false where the kernel
    /// cannot (nothing changes then).
    @discardableResult
    public func registerRingDescriptor() -> Bool {
        io_uring_register_ring_fd(ring) == 1
    }

    // MARK: - Buffers

    /// Registers every slot of `pool` as a fixed buffer (slot index = buffer
    /// index). The pool's pages are pinned and charged to RLIMIT_MEMLOCK
    /// unless the process has CAP_IPC_LOCK.
    public func registerBuffers(_ pool: BufferPool) throws {
        var vectors = [iovec]()
        vectors.reserveCapacity(pool.slotCount)
        for slot in 0..<pool.slotCount {
            vectors.append(iovec(iov_base: pool.pointer(UInt32(slot)), iov_len: pool.slotSize))
        }
        let result = vectors.withUnsafeBufferPointer {
            io_uring_register_buffers(ring, $0.baseAddress, UInt32($0.count))
        }
        guard result == 0 else {
            throw RingError("io_uring_register_buffers", errno: -result)
        }
        registeredBufferCount = pool.slotCount
    }

    /// Reserves `count` empty fixed-buffer entries (a sparse table), to be
    /// filled one at a time by `registerBuffer(at:base:length:)` as a pool grows.
    public func registerBufferTable(count: Int) throws {
        let result = io_uring_register_buffers_sparse(ring, UInt32(count))
        guard result == 0 else {
            throw RingError("io_uring_register_buffers_sparse of \(count) entries", errno: -result)
        }
        registeredBufferCount = count
    }

    /// Registers `length` bytes at `base` as fixed buffer `index` of the
    /// sparse table. Its pages are pinned and charged to RLIMIT_MEMLOCK
    /// unless the process has CAP_IPC_LOCK.
    public func registerBuffer(at index: Int, base: UnsafeMutableRawPointer, length: Int) throws {
        var vector = iovec(iov_base: base, iov_len: length)
        let result = io_uring_register_buffers_update_tag(ring, UInt32(index), &vector, nil, 1)
        guard result >= 0 else {
            throw RingError("io_uring_register_buffers_update_tag of \(length) bytes", errno: -result)
        }
    }

    // MARK: - Submission

    /// A cleared SQE, submitting what is queued first when the SQ is full.
    @inlinable @inline(__always)
    public func nextSQE() -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(ring) { return sqe }
        return nextSQEAfterFlush()
    }

    @usableFromInline
    func nextSQEAfterFlush() -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            _ = io_uring_submit(ring)
            if let sqe = io_uring_get_sqe(ring) { return sqe }
            // The kernel could not take any (CQ overflow back-pressure): wait a little.
            _ = io_uring_submit_and_wait(ring, 1)
        }
    }

    /// Submits queued SQEs without waiting. Returns how many were taken.
    @discardableResult
    public func submit() -> Int32 {
        io_uring_submit(ring)
    }

    /// Submits queued SQEs and has the kernel post the completions that are
    /// ready, without waiting for any: with `DEFER_TASKRUN` they reach the
    /// CQ only when the task enters the kernel for events. One syscall.
    public func submitAndGetEvents() throws {
        let result = io_uring_submit_and_get_events(ring)
        if result < 0 {
            switch -result {
            case EINTR, ETIME, EAGAIN, EBUSY: return
            default: throw RingError("io_uring_enter", errno: -result)
            }
        }
    }

    /// Submits queued SQEs and waits until at least `count` completions are
    /// ready or `timeoutNanoseconds` has passed (when > 0). One syscall.
    /// EINTR, ETIME and EBUSY are normal outcomes and not errors here.
    public func submitAndWait(count: UInt32 = 1, timeoutNanoseconds: Int64 = 0) throws {
        let result: Int32
        if timeoutNanoseconds > 0 {
            var timeout = __kernel_timespec(tv_sec: timeoutNanoseconds / 1_000_000_000,
                                            tv_nsec: timeoutNanoseconds % 1_000_000_000)
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            result = io_uring_submit_and_wait_timeout(ring, &cqe, count, &timeout, nil)
        } else {
            result = io_uring_submit_and_wait(ring, count)
        }
        if result < 0 {
            switch -result {
            case EINTR, ETIME, EAGAIN, EBUSY: return
            default: throw RingError("io_uring_enter", errno: -result)
            }
        }
    }

    // MARK: - Completion

    /// Copies up to `reapBatchMax` ready completions out of the CQ and
    /// advances its head once. Read them with `completion(at:)`.
    @inline(__always)
    public func reap() -> Int {
        Int(shim_reap_batch(ring, reaped, UInt32(reapBatchMax)))
    }

    @inline(__always)
    public func completion(at index: Int) -> Completion {
        let raw = reaped[index]
        return Completion(tag: CompletionTag(rawValue: raw.user_data), result: raw.res, flags: raw.flags)
    }

    // MARK: - Operations

    @inline(__always)
    private func finish(_ sqe: UnsafeMutablePointer<io_uring_sqe>, _ tag: CompletionTag, flags: UInt8 = 0) {
        io_uring_sqe_set_data64(sqe, tag.rawValue)
        if flags != 0 { shim_sqe_set_flags(sqe, flags) }
    }

    @inline(__always)
    public func prepareRecv(fd: Int32, into buffer: UnsafeMutableRawPointer, length: Int, tag: CompletionTag,
                            flags: Int32 = 0) {
        let sqe = nextSQE()
        io_uring_prep_recv(sqe, fd, buffer, length, flags)
        finish(sqe, tag)
    }

    /// Recv into a slot the kernel picks from buffer group `group` when data
    /// arrives (`Completion.selectedBuffer`); -ENOBUFS when none is lent.
    @inline(__always)
    public func prepareRecv(fd: Int32, group: UInt16, length: Int, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_recv(sqe, fd, nil, length, 0)
        sqe.pointee.buf_group = group
        finish(sqe, tag, flags: shim_IOSQE_BUFFER_SELECT)
    }

    /// Multishot recv (Linux 6.0 and later): one SQE, then one completion
    /// per arrival, each in a slot the kernel picks from buffer group `group`
    /// (`Completion.selectedBuffer`), while `hasMore` is set. It ends, without
    /// `hasMore`, on EOF, an error, or -ENOBUFS when no slot is lent; then it
    /// must be prepared again. An older kernel fails it with -EINVAL.
    @inline(__always)
    public func prepareRecvMultishot(fd: Int32, group: UInt16, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_recv_multishot(sqe, fd, nil, 0, 0)
        sqe.pointee.buf_group = group
        finish(sqe, tag, flags: shim_IOSQE_BUFFER_SELECT)
    }

    /// A plain read (an eventfd's counter, a pipe).
    @inline(__always)
    public func prepareRead(fd: Int32, into buffer: UnsafeMutableRawPointer, length: Int, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_read(sqe, fd, buffer, UInt32(length), 0)
        finish(sqe, tag)
    }

    @inline(__always)
    public func prepareSend(fd: Int32, from buffer: UnsafeRawPointer, length: Int, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_send(sqe, fd, buffer, length, shim_MSG_NOSIGNAL)
        finish(sqe, tag)
    }

    /// A gathered send: one `sendmsg` over `message`'s iovec, which must
    /// stay valid (and unchanged) until the completion arrives, since the
    /// kernel may read it again when the socket becomes writable.
    @inline(__always)
    public func prepareSendMessage(fd: Int32, message: UnsafePointer<msghdr>, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_sendmsg(sqe, fd, message, UInt32(shim_MSG_NOSIGNAL))
        finish(sqe, tag)
    }

    /// Whether this kernel's io_uring has `IORING_OP_SENDMSG` (5.3 and later);
    /// asked once, at setup.
    public private(set) lazy var supportsSendMessage = supports(IORING_OP_SENDMSG)

    /// Whether this kernel's io_uring has every one of `operations` (io_uring's opcode probe).
    private func supports(_ operations: io_uring_op...) -> Bool {
        guard let probe = io_uring_get_probe_ring(ring) else { return false }
        defer { io_uring_free_probe(probe) }
        return operations.allSatisfy { io_uring_opcode_supported(probe, Int32($0.rawValue)) != 0 }
    }

    /// Zero-copy send: completes twice with the same tag, first with the
    /// result (`hasMore` set when a notification follows), later with the
    /// notification (`isNotification`) once the kernel no longer reads the
    /// buffer; only then may it be written again. From registered buffer
    /// `bufferIndex` when given (the kernel then pins nothing per send).
    /// The notification says whether the kernel copied after all
    /// (`Completion.zeroCopyCopied`).
    @inline(__always)
    public func prepareSendZeroCopy(fd: Int32, from buffer: UnsafeRawPointer, length: Int,
                                    bufferIndex: UInt32?, tag: CompletionTag) {
        let sqe = nextSQE()
        if let bufferIndex {
            io_uring_prep_send_zc_fixed(sqe, fd, buffer, length, shim_MSG_NOSIGNAL, 0, bufferIndex)
        } else {
            io_uring_prep_send_zc(sqe, fd, buffer, length, shim_MSG_NOSIGNAL, 0)
        }
        if reportsZeroCopyUsage { shim_sqe_add_send_flags(sqe, shim_IORING_SEND_ZC_REPORT_USAGE) }
        finish(sqe, tag)
    }

    /// A gathered zero-copy send (`SENDMSG_ZC`), completing as
    /// `prepareSendZeroCopy` does; `message` stays valid until the result.
    /// With `bufferIndex` every iovec must lie in that registered buffer,
    /// and the kernel must take it (`probeFixedVectoredZeroCopy`).
    @inline(__always)
    public func prepareSendMessageZeroCopy(fd: Int32, message: UnsafePointer<msghdr>, bufferIndex: UInt32?,
                                           tag: CompletionTag) {
        let sqe = nextSQE()
        if let bufferIndex {
            shim_prep_sendmsg_zc_fixed(sqe, fd, message, UInt32(shim_MSG_NOSIGNAL), bufferIndex)
        } else {
            io_uring_prep_sendmsg_zc(sqe, fd, message, UInt32(shim_MSG_NOSIGNAL))
        }
        if reportsZeroCopyUsage { shim_sqe_add_send_flags(sqe, shim_IORING_SEND_ZC_REPORT_USAGE) }
        finish(sqe, tag)
    }

    /// Whether zero-copy sends ask the kernel to say in the notification
    /// whether it copied after all (`IORING_SEND_ZC_REPORT_USAGE`, 6.2 and
    /// later; 6.1 fails a send that asks). Set by `probeZeroCopyUsageReport`.
    public private(set) var reportsZeroCopyUsage = false

    /// Whether this kernel's io_uring has the zero-copy sends, `SEND_ZC`
    /// and `SENDMSG_ZC` (6.1 and later); asked once, at setup.
    public private(set) lazy var supportsZeroCopySend = supports(IORING_OP_SEND_ZC, IORING_OP_SENDMSG_ZC)

    /// Whether zero-copy notifications can say the kernel copied (6.2 and
    /// later): sets `reportsZeroCopyUsage`. Call at setup, on an empty ring.
    @discardableResult
    public func probeZeroCopyUsageReport() -> Bool {
        guard supportsZeroCopySend else { return false }
        reportsZeroCopyUsage = probeFailsWithBadDescriptor { sqe in
            io_uring_prep_send_zc(sqe, -1, nil, 0, 0, 0)
            shim_sqe_add_send_flags(sqe, shim_IORING_SEND_ZC_REPORT_USAGE)
        }
        return reportsZeroCopyUsage
    }

    /// Whether `SENDMSG_ZC` takes a registered buffer (6.15 and later).
    /// Needs registered buffer 0 and an empty ring (call at setup).
    public func probeFixedVectoredZeroCopy() -> Bool {
        guard supportsZeroCopySend else { return false }
        var message = msghdr()
        return withUnsafePointer(to: &message) { message in
            probeFailsWithBadDescriptor { sqe in
                shim_prep_sendmsg_zc_fixed(sqe, -1, message, UInt32(shim_MSG_NOSIGNAL), 0)
            }
        }
    }

    /// What the opcode probe cannot tell, whether a kernel takes a flag of
    /// an operation: the operation, prepared by `prepare` for descriptor -1,
    /// is submitted and waited for (with the notification a zero-copy send
    /// announces). A kernel that takes the flag fails it at issue with
    /// EBADF; an older one refuses the flag first, with EINVAL.
    private func probeFailsWithBadDescriptor(_ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) -> Bool {
        let probeTag = CompletionTag(rawValue: UInt64.max)
        let sqe = nextSQE()
        prepare(sqe)
        finish(sqe, probeTag)
        _ = io_uring_submit(ring)
        var answer = -EINVAL
        var awaiting = 1
        while awaiting > 0 {
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            let waited = io_uring_wait_cqe(ring, &cqe)
            if waited == -EINTR { continue }
            guard waited == 0, let cqe else { break }
            awaiting -= 1
            if cqe.pointee.user_data == probeTag.rawValue && cqe.pointee.flags & shim_IORING_CQE_F_NOTIF == 0 {
                answer = cqe.pointee.res
                if cqe.pointee.flags & shim_IORING_CQE_F_MORE != 0 { awaiting += 1 }
            }
            io_uring_cqe_seen(ring, cqe)
        }
        return answer == -EBADF
    }

    /// Multishot accept: one SQE, one completion per accepted connection
    /// while `hasMore` is set.
    public func prepareAcceptMultishot(fd: Int32, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_multishot_accept(sqe, fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        finish(sqe, tag)
    }

    /// Connect, optionally linked to a timeout that cancels it (the connect
    /// then completes with -ECANCELED; the timeout completes too, with
    /// `timeoutTag`). `address` must stay valid until the next submit.
    public func prepareConnect(fd: Int32, address: UnsafePointer<sockaddr>, length: socklen_t,
                               tag: CompletionTag, timeout: RingTimeout?,
                               timeoutTag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_connect(sqe, fd, address, length)
        if let timeout {
            finish(sqe, tag, flags: shim_IOSQE_IO_LINK)
            let timeoutSQE = nextSQE()
            io_uring_prep_link_timeout(timeoutSQE, timeout.pointer, 0)
            finish(timeoutSQE, timeoutTag)
        } else {
            finish(sqe, tag)
        }
    }

    /// The kernel runs it on an io-wq thread, never inline.
    public func prepareShutdown(fd: Int32, how: Int32, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_shutdown(sqe, fd, how)
        finish(sqe, tag)
    }

    /// Close through the ring; no completion unless it fails.
    public func prepareClose(fd: Int32, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_close(sqe, fd)
        finish(sqe, tag, flags: shim_IOSQE_CQE_SKIP_SUCCESS)
    }

    /// Cancels every operation in flight on `fd`; each completes with -ECANCELED
    /// (or its own result if it raced to completion).
    public func prepareCancel(fd: Int32, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_cancel_fd(sqe, fd, shim_IORING_ASYNC_CANCEL_ALL)
        finish(sqe, tag)
    }

    /// Cancels the operation whose user data is `target`.
    public func prepareCancel(target: CompletionTag, tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_cancel64(sqe, target.rawValue, 0)
        finish(sqe, tag)
    }

    /// A timeout of its own (not linked): completes with -ETIME once
    /// `nanoseconds` (at least 1) have passed since its submission. The
    /// kernel reads the duration at submission, from the ring's one copy:
    /// one such timeout per submit.
    public func prepareTimeout(nanoseconds: Int64, tag: CompletionTag) {
        let duration = max(1, nanoseconds)
        timeoutSpec.pointee = __kernel_timespec(tv_sec: duration / 1_000_000_000, tv_nsec: duration % 1_000_000_000)
        let sqe = nextSQE()
        io_uring_prep_timeout(sqe, timeoutSpec, 0, 0)
        finish(sqe, tag)
    }

    public func prepareNop(tag: CompletionTag) {
        let sqe = nextSQE()
        io_uring_prep_nop(sqe)
        finish(sqe, tag)
    }
}
