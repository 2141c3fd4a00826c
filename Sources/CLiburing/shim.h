// What Swift cannot import from liburing by itself: function-like macros,
// IOSQE_* flags (enum-less #defines of shifted values), the CQE iteration
// macro, and helpers newer than liburing 2.3 (Debian 12). Everything here is
// `static inline` so the module stays header-only apart from liburing itself.
#ifndef SWIFT_DUPLICATOR_CLIBURING_SHIM_H
#define SWIFT_DUPLICATOR_CLIBURING_SHIM_H

// The C library's headers come first, under the default feature macros, so
// they match Swift's Glibc module; liburing.h defines _XOPEN_SOURCE and
// _GNU_SOURCE, which would otherwise change fd_set and friends and make the
// two modules disagree.
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <liburing.h>

// Constants newer than liburing 2.3's headers, with the kernel's values.
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_CQSIZE
#define IORING_SETUP_CQSIZE (1U << 3)
#endif
#ifndef IORING_CQE_F_MORE
#define IORING_CQE_F_MORE (1U << 1)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef IORING_CQE_F_BUFFER
#define IORING_CQE_F_BUFFER (1U << 0)
#endif
#ifndef IORING_CQE_BUFFER_SHIFT
#define IORING_CQE_BUFFER_SHIFT 16
#endif
#ifndef IORING_RECVSEND_FIXED_BUF
#define IORING_RECVSEND_FIXED_BUF (1U << 2)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0)
#endif
#ifndef IORING_ASYNC_CANCEL_FD
#define IORING_ASYNC_CANCEL_FD (1U << 1)
#endif

static const uint8_t shim_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE;
static const uint8_t shim_IOSQE_IO_DRAIN = IOSQE_IO_DRAIN;
static const uint8_t shim_IOSQE_IO_LINK = IOSQE_IO_LINK;
static const uint8_t shim_IOSQE_IO_HARDLINK = IOSQE_IO_HARDLINK;
static const uint8_t shim_IOSQE_ASYNC = IOSQE_ASYNC;
static const uint8_t shim_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
static const uint8_t shim_IOSQE_CQE_SKIP_SUCCESS = IOSQE_CQE_SKIP_SUCCESS;

static const uint32_t shim_IORING_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const uint32_t shim_IORING_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const uint32_t shim_IORING_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
static const uint32_t shim_IORING_SETUP_TASKRUN_FLAG = IORING_SETUP_TASKRUN_FLAG;
static const uint32_t shim_IORING_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const uint32_t shim_IORING_SETUP_CQSIZE = IORING_SETUP_CQSIZE;
static const uint32_t shim_IORING_CQE_F_MORE = IORING_CQE_F_MORE;
static const uint32_t shim_IORING_CQE_F_NOTIF = IORING_CQE_F_NOTIF;
static const uint32_t shim_IORING_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
static const uint32_t shim_IORING_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;
static const uint16_t shim_IORING_RECVSEND_FIXED_BUF = IORING_RECVSEND_FIXED_BUF;
static const uint32_t shim_IORING_ASYNC_CANCEL_ALL = IORING_ASYNC_CANCEL_ALL;
static const uint16_t shim_IORING_SEND_ZC_REPORT_USAGE = IORING_SEND_ZC_REPORT_USAGE;
static const uint32_t shim_IORING_NOTIF_USAGE_ZC_COPIED = IORING_NOTIF_USAGE_ZC_COPIED;

// Socket constants that Glibc's Swift overlay exposes awkwardly or not at all.
static const int shim_SOCK_STREAM_CLOEXEC_NONBLOCK = SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK;
static const int shim_SOCK_STREAM_CLOEXEC = SOCK_STREAM | SOCK_CLOEXEC;
static const int shim_MSG_NOSIGNAL = MSG_NOSIGNAL;
static const int shim_MSG_WAITALL = MSG_WAITALL;

/// One completion copied out of the CQ ring, so the ring slot can be
/// returned to the kernel before the completion is handled.
typedef struct {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} shim_completion;

/// Copies up to `max` ready completions into `out` and advances the CQ head
/// once for all of them (one store-release instead of one per CQE). Never
/// waits. Returns how many were copied.
static inline unsigned shim_reap_batch(struct io_uring *ring, shim_completion *out, unsigned max) {
    unsigned head;
    unsigned count = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (count == max) break;
        out[count].user_data = cqe->user_data;
        out[count].res = cqe->res;
        out[count].flags = cqe->flags;
        count++;
    }
    if (count > 0) io_uring_cq_advance(ring, count);
    return count;
}

/// A zero-copy sendmsg whose iovec lies in registered buffer `buf_index`
/// (IORING_RECVSEND_FIXED_BUF on SENDMSG_ZC: Linux 6.15 and later; older
/// kernels fail it with -EINVAL). liburing 2.3 has no helper for it.
static inline void shim_prep_sendmsg_zc_fixed(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg,
                                              unsigned flags, unsigned buf_index) {
    io_uring_prep_sendmsg_zc(sqe, fd, msg, flags);
    sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
    sqe->buf_index = (__u16)buf_index;
}

/// Zero-copy send flags (IORING_RECVSEND_*, IORING_SEND_ZC_*) live in the SQE's ioprio.
static inline void shim_sqe_add_send_flags(struct io_uring_sqe *sqe, uint16_t flags) {
    sqe->ioprio |= flags;
}

/// Sets the SQE flags (IOSQE_*) of a prepared SQE.
static inline void shim_sqe_set_flags(struct io_uring_sqe *sqe, uint8_t flags) {
    sqe->flags |= flags;
}

/// Free SQ entries: io_uring_sq_space_left is inline in 2.3 but reads the
/// kernel head with an acquire; wrapped so Swift sees one call.
static inline unsigned shim_sq_space_left(struct io_uring *ring) {
    return io_uring_sq_space_left(ring);
}

static inline unsigned shim_ring_features(const struct io_uring *ring) {
    return ring->features;
}

/// io_uring_setup_buf_ring arrived in liburing 2.4; this is its 2.3 form:
/// map page-aligned ring memory, register it as buffer group `group`.
/// Returns the ring or NULL with *err set to a negative errno.
static inline struct io_uring_buf_ring *shim_setup_buf_ring(struct io_uring *ring, unsigned entries,
                                                            int group, int *err) {
    size_t size = (size_t)entries * sizeof(struct io_uring_buf);
    void *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (memory == MAP_FAILED) { *err = -errno; return NULL; }
    struct io_uring_buf_ring *br = (struct io_uring_buf_ring *)memory;
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)br;
    reg.ring_entries = entries;
    reg.bgid = (unsigned short)group;
    int ret = io_uring_register_buf_ring(ring, &reg, 0);
    if (ret < 0) { munmap(memory, size); *err = ret; return NULL; }
    *err = 0;
    return br;
}

static inline void shim_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br,
                                      unsigned entries, int group) {
    io_uring_unregister_buf_ring(ring, group);
    munmap(br, (size_t)entries * sizeof(struct io_uring_buf));
}

static inline int shim_buf_ring_mask(unsigned entries) { return io_uring_buf_ring_mask(entries); }

#endif
