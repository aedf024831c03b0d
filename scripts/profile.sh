#!/usr/bin/env bash
# Counts Lifeguard's user-space instructions and heap allocations per transaction with callgrind, which is
# repeatable where CPU time on a shared machine is not.
#
#   scripts/profile.sh            build (release), start a throwaway PostgreSQL, print per-transaction
#                                 instructions and malloc calls for pgbench -S in simple, extended and
#                                 prepared mode, and for connect-per-transaction (-C)
#
# Lifeguard runs under valgrind with instrumentation off; each mode warms up (200 transactions), then
# instrumentation is switched on for TRANSACTIONS (default 2000) transactions of pgbench -c 4 -j 1.
# Environment: LIFEGUARD_BINARY (skip the build), TRANSACTIONS, PROFILE_PG_PORT (default 54339),
# PROFILE_PORT (Lifeguard's port, default 6439), PGBIN, PROFILE_OUT (a directory that keeps each mode's
# callgrind output, for callgrind_annotate).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN
transactions=${TRANSACTIONS:-2000}
pg_port=${PROFILE_PG_PORT:-54339}
port=${PROFILE_PORT:-6439}
work=$(mktemp -d /tmp/lifeguard-profile.XXXXXX)
chmod 755 "$work"
log() { printf '[profile] %s\n' "$*" >&2; }

command -v valgrind >/dev/null || { log "installing valgrind"; apt-get install -y -qq valgrind >/dev/null; }
binary=${LIFEGUARD_BINARY:-$("$repo/scripts/build-release.sh")}
# Debug info makes valgrind slow to start; the counts do not need it.
cp "$binary" "$work/lifeguard"
strip --strip-debug "$work/lifeguard"

cleanup() {
    [ -n "${valgrind_pid:-}" ] && kill "$valgrind_pid" 2>/dev/null && wait "$valgrind_pid" 2>/dev/null
    "$repo/scripts/pg-cluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$repo/scripts/pg-cluster.sh" start "$work/pg" "$pg_port" >/dev/null
pgbench -i -q -h 127.0.0.1 -p "$pg_port" -U postgres lgbench >/dev/null 2>&1

cat > "$work/lifeguard.ini" <<INI
[databases]
lgbench = host=127.0.0.1 port=$pg_port user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
log_connections = 0
log_disconnections = 0
INI

cd "$work"
valgrind --tool=callgrind --instr-atstart=no --dump-instr=no --callgrind-out-file="$work/callgrind.out" \
    ./lifeguard lifeguard.ini >"$work/valgrind.log" 2>&1 &
valgrind_pid=$!
for _ in $(seq 1 120); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done

# One measured run: prints "instructions mallocs" for the counted transactions.
measure() {
    pgbench -n -h 127.0.0.1 -p "$port" -U postgres -c 4 -j 1 -t 50 "$@" lgbench >/dev/null 2>&1
    callgrind_control -z "$valgrind_pid" >/dev/null 2>&1
    callgrind_control -i on "$valgrind_pid" >/dev/null 2>&1
    pgbench -n -h 127.0.0.1 -p "$port" -U postgres -c 4 -j 1 -t $((transactions / 4)) "$@" lgbench >/dev/null
    callgrind_control -i off "$valgrind_pid" >/dev/null 2>&1
    rm -f "$work"/callgrind.out*
    callgrind_control -d "$valgrind_pid" >/dev/null 2>&1
    if [ -n "${PROFILE_OUT:-}" ]; then
        mkdir -p "$PROFILE_OUT"
        cat "$work"/callgrind.out.* >"$PROFILE_OUT/$(echo "$*" | tr -d ' -').out"
    fi
    python3 - "$work" "$transactions" <<'PY'
import glob, re, sys
work, transactions = sys.argv[1], int(sys.argv[2])
instructions = 0
mallocs = 0
names = {}
for path in glob.glob(work + "/callgrind.out*"):
    calls_to = None
    for line in open(path, errors="replace"):
        if line.startswith("summary:") or line.startswith("totals:"):
            instructions = max(instructions, int(line.split()[1]))
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(2): names[m.group(1)] = m.group(2).strip()
            calls_to = names.get(m.group(1)) if line.startswith("cfn=") else None
            continue
        if line.startswith("calls=") and calls_to in ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc"):
            mallocs += int(line.split("=")[1].split()[0])
print(f"{instructions / transactions:.0f} {mallocs / transactions:.2f}")
PY
}

printf '%-28s %14s %14s\n' "pgbench mode" "instr/tx" "mallocs/tx"
for mode in "-S" "-S -M extended" "-S -M prepared" "-S -C"; do
    read -r instructions mallocs < <(measure $mode)
    printf '%-28s %14s %14s\n' "$mode" "$instructions" "$mallocs"
done
