// Linux declarations that Swift's Glibc module leaves out.
#include <malloc.h>
#include <stdint.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/random.h>
#include <sys/socket.h>

/// The layout of Linux's `struct ucred` (SO_PEERCRED), which glibc declares only under _GNU_SOURCE.
typedef struct {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} lifeguard_peer_credentials;

/// One ready descriptor from epoll_wait. `struct epoll_event` is packed on x86-64, which Swift cannot
/// index into an array of, so the engine reads events through this plain copy.
typedef struct {
    int32_t fd;
    uint32_t events;
} lifeguard_ready_event;

/// Registers, changes or removes `fd` in the epoll set, keyed by the descriptor itself.
static inline int lifeguard_epoll_ctl(int epfd, int op, int fd, uint32_t events) {
    struct epoll_event event = {.events = events, .data = {.fd = fd}};
    return epoll_ctl(epfd, op, fd, &event);
}

/// epoll_wait into `ready` (at most 256 events per call).
static inline int lifeguard_epoll_wait(int epfd, lifeguard_ready_event *ready, int capacity, int timeout) {
    struct epoll_event events[256];
    if (capacity > 256) capacity = 256;
    int count = epoll_wait(epfd, events, capacity, timeout);
    for (int i = 0; i < count; i++) {
        ready[i].fd = events[i].data.fd;
        ready[i].events = events[i].events;
    }
    return count;
}

/// accept4 with non-blocking, close-on-exec sockets (declared by glibc only under _GNU_SOURCE).
int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);
static inline int lifeguard_accept(int fd, struct sockaddr *addr, socklen_t *addrlen) {
    return accept4(fd, addr, addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/// A counter several threads add to and read without a lock (relaxed: a hint, not a synchronisation).
static inline void lifeguard_atomic_add(int64_t *counter, int64_t delta) {
    __atomic_add_fetch(counter, delta, __ATOMIC_RELAXED);
}

static inline int64_t lifeguard_atomic_load(const int64_t *counter) {
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}
