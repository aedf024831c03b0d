#!/usr/bin/env bash
# Builds the optimised lifeguard binary and prints its path.
#
# Runtime exclusivity checks are turned off for every module (Lifeguard's and its dependencies'): callgrind
# showed them at about a fifth of the instructions spent per forwarded transaction. Debug builds, which the
# tests use, keep them, so a violation is still caught there.
#
# Cross-module optimisation lets the compiler specialise LifeguardCore's generic state machines (PoolState,
# ServerStateMachine, ClientStateMachine) for the sessions that use them: without it every pool event went
# through unspecialised generic code, 40% more instructions per forwarded transaction.
#
# The Swift runtime is linked statically: a dynamically linked libswiftCore alone was 5 MB of resident
# memory at start (its relocations touch its pages), a third of the daemon's.
set -euo pipefail
cd "$(dirname "$0")/.."
# Lifeguard's TLS links the system OpenSSL.
if [ ! -f /usr/include/openssl/ssl.h ]; then
    echo "installing libssl-dev" >&2
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev >/dev/null
fi
flags=(-c release -Xswiftc -enforce-exclusivity=unchecked -Xswiftc -cross-module-optimization --static-swift-stdlib)
swift build "${flags[@]}" --product lifeguard >&2
echo "$(swift build "${flags[@]}" --show-bin-path)/lifeguard"
