// Linux calls that Swift's Glibc module leaves out (<sys/epoll.h>,
// <sys/eventfd.h>) or hides behind _GNU_SOURCE (accept4,
// pthread_setname_np, sched_getaffinity), for LoadTools' epoll loops and
// the CLI's default thread count. struct epoll_event is
// packed on x86_64, so events cross into Swift through a plain struct.
#ifndef SWIFT_DUPLICATOR_CLINUXSYSTEM_SHIM_H
#define SWIFT_DUPLICATOR_CLINUXSYSTEM_SHIM_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <sys/uio.h>

extern int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);
extern int pthread_setname_np(pthread_t thread, const char *name);

typedef struct {
    uint32_t events;
    uint64_t token;
} shim_epoll_ready;

static inline int shim_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static inline int shim_epoll_control(int epoll, int operation, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event;
    event.events = events;
    event.data.u64 = token;
    return epoll_ctl(epoll, operation, fd, &event);
}

/// epoll_wait into `ready` (at most 256 at a time; the loops are level-triggered).
static inline int shim_epoll_wait(int epoll, shim_epoll_ready *ready, int capacity, int timeout_ms) {
    struct epoll_event events[256];
    if (capacity > 256) capacity = 256;
    int count = epoll_wait(epoll, events, capacity, timeout_ms);
    for (int index = 0; index < count; index++) {
        ready[index].events = events[index].events;
        ready[index].token = events[index].data.u64;
    }
    return count;
}

/// As shim_epoll_wait, with a timeout in nanoseconds (epoll_pwait2, Linux 5.11);
/// on an older kernel, rounded up to milliseconds.
static inline int shim_epoll_wait_ns(int epoll, shim_epoll_ready *ready, int capacity, long long timeout_ns) {
    struct epoll_event events[256];
    if (capacity > 256) capacity = 256;
    struct timespec timeout = { (time_t)(timeout_ns / 1000000000LL), (long)(timeout_ns % 1000000000LL) };
    int count = epoll_pwait2(epoll, events, capacity, &timeout, NULL);
    if (count < 0 && errno == ENOSYS) {
        count = epoll_wait(epoll, events, capacity, (int)((timeout_ns + 999999LL) / 1000000LL));
    }
    for (int index = 0; index < count; index++) {
        ready[index].events = events[index].events;
        ready[index].token = events[index].data.u64;
    }
    return count;
}

/// CPUs this process may run on (its affinity mask), or 0 if unknown.
extern int sched_getaffinity(pid_t pid, size_t size, cpu_set_t *mask);
static inline int shim_cpus_allowed(void) {
    cpu_set_t set;
    memset(&set, 0, sizeof(set));
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
    int count = 0;
    for (size_t word = 0; word < sizeof(set.__bits) / sizeof(set.__bits[0]); word++) {
        count += __builtin_popcountl(set.__bits[word]);
    }
    return count;
}

static inline int shim_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

/// A monotonic timer descriptor, and its one expiry `nanoseconds` from now
/// (at least 1: zero would disarm it).
static inline int shim_timerfd(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }
static inline int shim_timerfd_arm(int fd, long long nanoseconds) {
    if (nanoseconds < 1) nanoseconds = 1;
    struct itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    spec.it_value.tv_sec = nanoseconds / 1000000000LL;
    spec.it_value.tv_nsec = nanoseconds % 1000000000LL;
    return timerfd_settime(fd, 0, &spec, NULL);
}

/// The handover of listeners between two processes (`--handover-socket`):
/// descriptors passed over a Unix socket with SCM_RIGHTS, and who the peer
/// is (SO_PEERCRED). CMSG_* are macros Swift cannot import.
#define SHIM_PASSED_FDS_MAX 64

/// sendmsg of `length` bytes with `count` descriptors (at most
/// SHIM_PASSED_FDS_MAX) attached; the bytes sent, or -1 and errno.
static inline long shim_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, int count) {
    if (count < 0 || count > SHIM_PASSED_FDS_MAX) { errno = EINVAL; return -1; }
    union { char buffer[CMSG_SPACE(sizeof(int) * SHIM_PASSED_FDS_MAX)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct iovec vector = { (void *)bytes, length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    if (count > 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)count);
    }
    return (long)sendmsg(socket, &message, MSG_NOSIGNAL);
}

/// recvmsg of up to `capacity` bytes and the descriptors that came with
/// them (close-on-exec): at most `fd_capacity` (<= SHIM_PASSED_FDS_MAX) into
/// `fds`, their number in `*fd_count`; `*truncated` is 1 when the kernel
/// dropped some (MSG_CTRUNC: the ones it did pass are in `fds` and must be
/// closed). The bytes received, or -1 and errno.
static inline long shim_receive_with_fds(int socket, void *bytes, size_t capacity, int *fds, int fd_capacity,
                                         int *fd_count, int *truncated) {
    union { char buffer[CMSG_SPACE(sizeof(int) * SHIM_PASSED_FDS_MAX)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct iovec vector = { bytes, capacity };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof(control.buffer);
    *fd_count = 0;
    *truncated = 0;
    long received = (long)recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    if (received < 0) return received;
    if (message.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(header);
        for (int index = 0; index < count; index++) {
            if (*fd_count < fd_capacity) { fds[(*fd_count)++] = passed[index]; }
            else { close(passed[index]); *truncated = 1; }
        }
    }
    return received;
}

/// The process at the other end of a connected Unix socket (SO_PEERCRED),
/// as struct ucred (hidden behind _GNU_SOURCE) lays it out; 0 or -1 and errno.
static inline int shim_peer_credentials(int socket, int *pid, unsigned int *uid) {
    struct { int pid; unsigned int uid; unsigned int gid; } credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    return 0;
}

#endif
