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
#include <time.h>

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

#endif
