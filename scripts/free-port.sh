#!/usr/bin/env bash
# Prints a TCP port P such that P and P+1 are free on this machine, for a throwaway PostgreSQL and the
# Lifeguard in front of it. Chosen below 32768: the kernel hands out the ports above that to outgoing
# connections, and one of those may hold the port by the time the server binds it.
set -euo pipefail
for _ in $(seq 200); do
    port=$((20000 + RANDOM % 12000))
    if ! command -v ss >/dev/null || ! ss -Htan "( sport = :$port or sport = :$((port + 1)) )" | grep -q .; then
        echo "$port"
        exit 0
    fi
done
echo "free-port.sh: no free port pair found" >&2
exit 1
