#!/usr/bin/env bash
# A test host that drops every packet: the far end of a veth pair inside a network namespace, with its
# interface left down, so SYNs to it go unanswered (no RST, no ICMP). Needs root.
#
#   scripts/blackhole-host.sh create NAME SUBNET   e.g. create lgdrop1 10.213.0   -> host at SUBNET.2
#   scripts/blackhole-host.sh destroy NAME
set -euo pipefail
action=${1:?usage: blackhole-host.sh create NAME SUBNET | destroy NAME}
name=${2:?missing NAME}
case "$action" in
create)
    subnet=${3:?missing SUBNET (three octets)}
    ip netns add "$name"
    ip link add "${name}a" type veth peer name "${name}b"
    ip link set "${name}b" netns "$name"
    ip addr add "$subnet.1/30" dev "${name}a"
    ip link set "${name}a" up
    ip netns exec "$name" ip addr add "$subnet.2/30" dev "${name}b"
    ;;
destroy)
    ip link del "${name}a" 2>/dev/null || true
    ip netns del "$name" 2>/dev/null || true
    ;;
*)
    echo "usage: blackhole-host.sh create NAME SUBNET | destroy NAME" >&2
    exit 2
    ;;
esac
