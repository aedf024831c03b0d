// Linux declarations that Swift's Glibc module leaves out.
#include <malloc.h>
#include <stdint.h>

/// The layout of Linux's `struct ucred` (SO_PEERCRED), which glibc declares only under _GNU_SOURCE.
typedef struct {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} lifeguard_peer_credentials;
