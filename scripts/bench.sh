#!/usr/bin/env bash
# Benchmarks Lifeguard against PgBouncer with pgbench, on one throwaway PostgreSQL 15.
#
#   scripts/bench.sh
#
# Environment:
#   BENCH_SECONDS   length of each measured pgbench run (default 15)
#   BENCH_ROUNDS    how many times to repeat every (workload, pooler) pair (default 1)
#   BENCH_WARMUP    seconds of unmeasured pgbench traffic through each pooler before measuring (default 2)
#   BENCH_SCALE     pgbench -i scale factor (default 10)
#   BENCH_WORKLOADS which workloads to run, space-separated (default "simple extended prepared connect tls")
#   IDLE_CLIENTS    clients held idle through each pooler for the memory measurement (default 10000; 0 skips)
#   BENCH_THREADS   Lifeguard thread counts for the thread sweep (default "1 2"; empty skips it)
#   LIFEGUARD_BINARY  a lifeguard binary to measure instead of building one (to compare two builds)
#   PG_PORT, LIFEGUARD_PORT, PGBOUNCER_PORT
#                   first port to try for each process (defaults 55432, 56432, 56532); a port that is
#                   already taken is skipped, so a system pgbouncer on 6432 is never touched
#
# What it does:
#   1. installs postgresql-15 (server + pgbench), postgresql-client and pgbouncer if missing
#   2. builds Lifeguard in release mode (scripts/build-release.sh)
#   3. starts ONE PostgreSQL cluster via scripts/pg-cluster.sh and runs pgbench -i on lgbench
#   4. starts Lifeguard and PgBouncer, each from its own generated ini (md5 auth as lg_md5,
#      transaction pooling, default_pool_size=20, max_client_conn=200; client TLS allowed with one
#      certificate made here for both, used only by the tls workload: the others run with sslmode=disable)
#   5. for each workload, runs pgbench through Lifeguard then PgBouncer (BENCH_ROUNDS times),
#      measuring TPS and the pooler's CPU time (utime+stime from /proc/PID/stat)
#   6. holds IDLE_CLIENTS logged-in idle clients through each pooler (scripts/hold-clients.py) and reports
#      the pooler's RSS growth per client, and its RSS just after start
#   7. thread sweep: Lifeguard alone with each of BENCH_THREADS engine threads, on the simple workload and on
#      a pooler-bound one (SELECT 1 from 100 clients, Lifeguard reaching PostgreSQL over its Unix socket),
#      TPS and CPU per 1000 transactions for each count and relative to one thread
#   8. prints a table and, per workload, the Lifeguard/PgBouncer ratios
# Everything (poolers, cluster, temp dir) is cleaned up on exit.
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------------------------------------
# 1. Dependencies
# ---------------------------------------------------------------------------------------------
missing=()
[ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pgbench" ] || missing+=(postgresql-15)
command -v psql >/dev/null && command -v pg_isready >/dev/null || missing+=(postgresql-client)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    # Installing pgbouncer may start a system service on 6432; we never use that port or service.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
PGBENCH="$PGBIN/pgbench"
command -v swift >/dev/null || die "swift is not installed (needed to build Lifeguard)"

# ---------------------------------------------------------------------------------------------
# 2. Build Lifeguard (release)
# ---------------------------------------------------------------------------------------------
log "building Lifeguard (release)"
LIFEGUARD=${LIFEGUARD_BINARY:-$("$repo/scripts/build-release.sh")}
[ -x "$LIFEGUARD" ] || die "build did not produce $LIFEGUARD"

# ---------------------------------------------------------------------------------------------
# Temp dir, ports and cleanup
# ---------------------------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/lifeguard-bench.XXXXXX)
chmod 755 "$tmp"          # the postgres user (cluster, pgbouncer) must reach files in here
pg_dir="$tmp/pg"          # owned by scripts/pg-cluster.sh (it deletes it on stop)
lg_pid=""
pgb_pid=""
sweep_pid=""
cluster_started=0

cleanup() {
    local rc=$?
    set +e
    for pid in $lg_pid $pgb_pid $sweep_pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null     # immediate shutdown for both poolers
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    [ "$cluster_started" = 1 ] && "$repo/scripts/pg-cluster.sh" stop "$pg_dir"
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Any socket on the port counts, not only listeners: a TIME-WAIT left by an outgoing connection that
# happened to get this port as its local port also makes bind() fail.
port_in_use() { ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
# First free TCP port at or after $1, skipping any in the remaining arguments.
free_port() {
    local p=$1; shift
    while port_in_use "$p" || [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done
    echo "$p"
}
pg_port=$(free_port "${PG_PORT:-55432}")
lg_port=$(free_port "${LIFEGUARD_PORT:-56432}" "$pg_port")
pgb_port=$(free_port "${PGBOUNCER_PORT:-56532}" "$pg_port" "$lg_port")

# ---------------------------------------------------------------------------------------------
# 3. PostgreSQL + pgbench data
# ---------------------------------------------------------------------------------------------
log "starting PostgreSQL 15 on 127.0.0.1:$pg_port"
cluster_started=1
"$repo/scripts/pg-cluster.sh" start "$pg_dir" "$pg_port" >&2

export PGPASSWORD=md5pass  # lg_md5's password, used both against PostgreSQL and the poolers
export PGSSLMODE=disable   # plain text, but in the tls workload
log "pgbench -i -s $BENCH_SCALE lgbench (as lg_md5, so it owns the tables)"
"$PGBENCH" -i -q -s "$BENCH_SCALE" -h 127.0.0.1 -p "$pg_port" -U lg_md5 lgbench >"$tmp/pgbench-init.log" 2>&1 ||
    { cat "$tmp/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------------------------------------
# 4. Poolers: one generated ini each, identical apart from ports and file locations
# ---------------------------------------------------------------------------------------------
printf '"lg_md5" "md5pass"\n' >"$tmp/userlist.txt"
chmod 644 "$tmp/userlist.txt"
# One certificate for both poolers' client TLS (the tls workload); readable by PgBouncer's postgres user.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null
chmod 644 "$tmp/tls.key" "$tmp/tls.crt"

# write_ini NAME PORT: writes $tmp/NAME/NAME.ini with NAME's socket/log/pid files in $tmp/NAME
write_ini() {
    local name=$1 port=$2 dir="$tmp/$1"
    mkdir -p "$dir"
    chmod 777 "$dir"      # pgbouncer runs as postgres and writes its socket, log and pidfile here
    cat >"$dir/$name.ini" <<INI
[databases]
lgbench = host=127.0.0.1 port=$pg_port dbname=lgbench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = md5
auth_file = $tmp/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = $((IDLE_CLIENTS + 200))
logfile = $dir/$name.log
pidfile = $dir/$name.pid
log_connections = 0
log_disconnections = 0
client_tls_sslmode = allow
client_tls_key_file = $tmp/tls.key
client_tls_cert_file = $tmp/tls.crt
INI
    chmod 644 "$dir/$name.ini"
}
write_ini lifeguard "$lg_port"
write_ini pgbouncer "$pgb_port"

# wait_ready PORT PID NAME: until `SELECT 1` through the pooler succeeds (auth included); 1 on failure
wait_ready() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { log "$name exited during startup"; return 1; }
        if psql -X -qAt -h 127.0.0.1 -p "$port" -U lg_md5 -d lgbench -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "$name did not accept connections on 127.0.0.1:$port"
    return 1
}

log "starting Lifeguard on 127.0.0.1:$lg_port"
# Room for the idle clients (root may raise the soft limit up to the hard one).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$LIFEGUARD" "$tmp/lifeguard/lifeguard.ini" 2>"$tmp/lifeguard/stderr.log" &
lg_pid=$!
wait_ready "$lg_port" "$lg_pid" Lifeguard || { cat "$tmp/lifeguard/stderr.log" >&2; exit 1; }

log "starting PgBouncer $("$PGBOUNCER" --version | head -1 | awk '{print $2}') on 127.0.0.1:$pgb_port"
if [ "$(id -u)" = 0 ]; then
    # PgBouncer refuses to run as root; -u makes it switch to postgres (same process, so $! is its PID).
    "$PGBOUNCER" -u postgres "$tmp/pgbouncer/pgbouncer.ini" 2>"$tmp/pgbouncer/stderr.log" &
else
    "$PGBOUNCER" "$tmp/pgbouncer/pgbouncer.ini" 2>"$tmp/pgbouncer/stderr.log" &
fi
pgb_pid=$!
wait_ready "$pgb_port" "$pgb_pid" PgBouncer || { cat "$tmp/pgbouncer/stderr.log" "$tmp/pgbouncer/pgbouncer.log" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
declare -A start_rss=([Lifeguard]=$(rss_kib "$lg_pid") [PgBouncer]=$(rss_kib "$pgb_pid"))

# ---------------------------------------------------------------------------------------------
# 5. Measured runs
# ---------------------------------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)

# cpu_ticks PID: utime+stime of the whole process (all threads), in clock ticks.
# Fields are counted after the ")" that closes the command name, which may contain blanks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# Workloads: name and pgbench options (host/port/user/database/duration are added per run).
# "prepared" runs pgbench -M prepared through Lifeguard (its statements shared across the pool) against
# -M extended through PgBouncer, whose Debian version has no prepared statements in transaction mode.
# "tls" is simple with client TLS (sslmode=require; connections are made once, so it measures encryption,
# not handshakes).
read -r -a workloads <<<"${BENCH_WORKLOADS:-simple extended prepared connect tls}"
declare -A wl_opts=(
    [simple]="-S -c 50 -j 2"
    [tls]="-S -c 50 -j 2"
    [extended]="-S -M extended -c 50 -j 2"
    [prepared]="-S -M prepared -c 50 -j 2"
    [connect]="-S -C -c 20 -j 2"
)
declare -A pgbouncer_opts=([prepared]="-S -M extended -c 50 -j 2")
declare -A pooler_port=([Lifeguard]=$lg_port [PgBouncer]=$pgb_port)
declare -A pooler_pid=([Lifeguard]=$lg_pid [PgBouncer]=$pgb_pid)
poolers=(Lifeguard PgBouncer)

results="$tmp/results.tsv"   # workload pooler round tps cpu_s tx
: >"$results"
commands=()

# Unmeasured warm-up so both poolers start the measurements with their server pools filled.
if [ "$BENCH_WARMUP" -gt 0 ]; then
    for p in "${poolers[@]}"; do
        log "warm-up: ${BENCH_WARMUP}s through $p"
        "$PGBENCH" -n -S -c 20 -j 2 -T "$BENCH_WARMUP" -h 127.0.0.1 -p "${pooler_port[$p]}" -U lg_md5 lgbench \
            >/dev/null 2>&1 || log "warm-up through $p failed (continuing)"
    done
fi

for round in $(seq "$BENCH_ROUNDS"); do
    for w in "${workloads[@]}"; do
        for p in "${poolers[@]}"; do
            pid=${pooler_pid[$p]}
            kill -0 "$pid" 2>/dev/null || die "$p (pid $pid) is no longer running"
            # -n: no vacuum (the poolers only forward to lgbench; vacuum is irrelevant for -S)
            opts=${wl_opts[$w]}
            [ "$p" = PgBouncer ] && [ -n "${pgbouncer_opts[$w]:-}" ] && opts=${pgbouncer_opts[$w]}
            cmd="$PGBENCH -n $opts -T $BENCH_SECONDS -h 127.0.0.1 -p ${pooler_port[$p]} -U lg_md5 lgbench"
            sslmode=disable
            [ "$w" = tls ] && sslmode=require
            [ "$round" = 1 ] && commands+=("$(printf '%-9s %-9s PGPASSWORD=md5pass PGSSLMODE=%s %s' "$w" "$p" "$sslmode" "$cmd")")
            log "round $round/$BENCH_ROUNDS: $w through $p (${BENCH_SECONDS}s)"
            out="$tmp/run-$round-$w-$p.log"
            before=$(cpu_ticks "$pid")
            rc=0
            PGSSLMODE=$sslmode $cmd >"$out" 2>&1 || rc=$?
            after=$(cpu_ticks "$pid")
            # PG 15 prints "tps = N (without initial connection time)", or with -C
            # "tps = N (including reconnection times)"; take whichever is there.
            tps=$(awk '/^tps = /{print $3; exit}' "$out")
            tx=$(awk -F': *' '/^number of transactions actually processed/{split($2, a, "/"); print a[1]; exit}' "$out")
            if [ "$rc" != 0 ] || [ -z "$tps" ] || [ -z "$tx" ]; then
                log "pgbench exited with $rc; last lines of its output:"
                tail -5 "$out" >&2
                tps=${tps:-0}; tx=${tx:-0}
            fi
            cpu=$(awk -v a="$before" -v b="$after" -v hz="$clk_tck" 'BEGIN{printf "%.2f", (b - a) / hz}')
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$p" "$round" "$tps" "$cpu" "$tx" >>"$results"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# 6. Idle clients: RSS growth per logged-in client that holds no server
# ---------------------------------------------------------------------------------------------
declare -A idle_per_client=()
if [ "$IDLE_CLIENTS" -gt 0 ]; then
    for p in "${poolers[@]}"; do
        pid=${pooler_pid[$p]}
        log "holding $IDLE_CLIENTS idle clients through $p"
        before=$(rss_kib "$pid")
        mkfifo "$tmp/hold-$p"
        python3 "$repo/scripts/hold-clients.py" 127.0.0.1 "${pooler_port[$p]}" lg_md5 md5pass lgbench \
            "$IDLE_CLIENTS" <"$tmp/hold-$p" >"$tmp/hold-$p.out" 2>&1 &
        holder=$!
        exec 9>"$tmp/hold-$p"   # the holder keeps its clients until this closes
        for _ in $(seq 600); do
            grep -q '^ready' "$tmp/hold-$p.out" 2>/dev/null && break
            kill -0 "$holder" 2>/dev/null || break
            sleep 0.2
        done
        if grep -q '^ready' "$tmp/hold-$p.out"; then
            after=$(rss_kib "$pid")
            idle_per_client[$p]=$(( (after - before) * 1024 / IDLE_CLIENTS ))
        else
            log "holding idle clients through $p failed:"
            tail -3 "$tmp/hold-$p.out" >&2
            idle_per_client[$p]=n/a
        fi
        exec 9>&-
        wait "$holder" 2>/dev/null || true
    done
fi

# ---------------------------------------------------------------------------------------------
# 7. Thread sweep: Lifeguard alone, one instance per thread count
# ---------------------------------------------------------------------------------------------
read -r -a thread_counts <<<"${BENCH_THREADS-1 2}"
sweep="$tmp/threads.tsv"   # threads workload round tps cpu_s tx
: >"$sweep"
if [ ${#thread_counts[@]} -gt 0 ]; then
    printf 'SELECT 1;\n' >"$tmp/select1.sql"
    declare -A sweep_opts=(
        [simple]="-S -c 50 -j 2"
        [select1]="-f $tmp/select1.sql -c 100 -j 2"
    )
    sweep_port=$(free_port $((lg_port + 2)) "$pg_port" "$lg_port" "$pgb_port")
    for threads in "${thread_counts[@]}"; do
        dir="$tmp/threads-$threads"
        mkdir -p "$dir"
        # The same settings as the main run, plus the thread count; PostgreSQL over its Unix socket, so
        # that the pooler's side of each round trip costs less kernel time and its own CPU shows.
        sed -e "s|^listen_port = .*|listen_port = $sweep_port|" -e "s|^unix_socket_dir = .*|unix_socket_dir = $dir|" \
            -e "s|^logfile = .*|logfile = $dir/lifeguard.log|" -e "s|^pidfile = .*|pidfile = $dir/lifeguard.pid|" \
            -e "s|^lgbench = .*|lgbench = host=$tmp/pg port=$pg_port dbname=lgbench|" \
            "$tmp/lifeguard/lifeguard.ini" >"$dir/lifeguard.ini"
        printf 'threads = %s\n' "$threads" >>"$dir/lifeguard.ini"
        "$LIFEGUARD" "$dir/lifeguard.ini" 2>"$dir/stderr.log" &
        sweep_pid=$!
        wait_ready "$sweep_port" "$sweep_pid" "Lifeguard (threads = $threads)" || { cat "$dir/stderr.log" >&2; exit 1; }
        "$PGBENCH" -n -S -c 50 -j 2 -T "$BENCH_WARMUP" -h 127.0.0.1 -p "$sweep_port" -U lg_md5 lgbench >/dev/null 2>&1 || true
        for round in $(seq "$BENCH_ROUNDS"); do
            for w in simple select1; do
                log "threads = $threads, round $round/$BENCH_ROUNDS: $w (${BENCH_SECONDS}s)"
                out="$dir/run-$round-$w.log"
                before=$(cpu_ticks "$sweep_pid")
                "$PGBENCH" -n ${sweep_opts[$w]} -T "$BENCH_SECONDS" -h 127.0.0.1 -p "$sweep_port" -U lg_md5 lgbench \
                    >"$out" 2>&1 || log "pgbench exited with $?"
                after=$(cpu_ticks "$sweep_pid")
                tps=$(awk '/^tps = /{print $3; exit}' "$out")
                tx=$(awk -F': *' '/^number of transactions actually processed/{split($2, a, "/"); print a[1]; exit}' "$out")
                cpu=$(awk -v a="$before" -v b="$after" -v hz="$clk_tck" 'BEGIN{printf "%.2f", (b - a) / hz}')
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$threads" "$w" "$round" "${tps:-0}" "$cpu" "${tx:-0}" >>"$sweep"
            done
        done
        kill "$sweep_pid"
        wait "$sweep_pid" 2>/dev/null || true
        sweep_pid=""
    done
fi

# ---------------------------------------------------------------------------------------------
# 8. Report
# ---------------------------------------------------------------------------------------------
echo
echo "pgbench commands (each run ${BENCH_SECONDS}s, ${BENCH_ROUNDS} round(s); scale $BENCH_SCALE; $(nproc) CPUs):"
printf '  %s\n' "${commands[@]}"
echo
printf '%-9s %-9s %5s %10s %9s %11s %18s\n' workload pooler round tps cpu_s transactions cpu_s_per_1000_tx
awk -F'\t' '{
    per = ($6 > 0) ? sprintf("%.4f", $5 / $6 * 1000) : "n/a"
    printf "%-9s %-9s %5s %10.1f %9.2f %11d %18s\n", $1, $2, $3, $4, $5, $6, per
}' "$results"
echo
echo "Ratios Lifeguard/PgBouncer (tps: higher is better for Lifeguard; cpu per 1000 tx: lower is better)"
echo "(means over rounds: tps averaged, cpu per 1000 tx = total cpu / total tx)"
printf '%-9s %10s %22s\n' workload tps_ratio cpu_per_1000_tx_ratio
awk -F'\t' '
    { tps[$1, $2] += $4; n[$1, $2]++; cpu[$1, $2] += $5; tx[$1, $2] += $6; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
    END {
        for (i = 1; i <= k; i++) {
            w = order[i]
            lt = tps[w, "Lifeguard"] / n[w, "Lifeguard"]; pt = tps[w, "PgBouncer"] / n[w, "PgBouncer"]
            tr = (pt > 0) ? sprintf("%.3f", lt / pt) : "n/a"
            lc = (tx[w, "Lifeguard"] > 0) ? cpu[w, "Lifeguard"] / tx[w, "Lifeguard"] : -1
            pc = (tx[w, "PgBouncer"] > 0) ? cpu[w, "PgBouncer"] / tx[w, "PgBouncer"] : -1
            cr = (lc >= 0 && pc > 0) ? sprintf("%.3f", lc / pc) : "n/a"
            printf "%-9s %10s %22s\n", w, tr, cr
        }
    }' "$results"

echo
echo "Memory (VmRSS): at start, and growth per idle logged-in client with $IDLE_CLIENTS held"
printf '%-9s %14s %22s\n' pooler start_rss_kib bytes_per_idle_client
for p in "${poolers[@]}"; do
    printf '%-9s %14s %22s\n' "$p" "${start_rss[$p]}" "${idle_per_client[$p]:-skipped}"
done

if [ -s "$sweep" ]; then
    echo
    echo "Thread sweep (Lifeguard alone; simple: pgbench -S -c 50 -j 2; select1: SELECT 1 from -c 100 -j 2;"
    echo "PostgreSQL over its Unix socket; relative to the first thread count, means over rounds)"
    printf '%-8s %-8s %10s %18s %10s %14s\n' threads workload tps cpu_s_per_1000_tx tps_ratio cpu_per_tx_ratio
    awk -F'\t' '
        { k = $1 SUBSEP $2; tps[k] += $4; n[k]++; cpu[k] += $5; tx[k] += $6
          if (!($1 in seen)) { seen[$1] = 1; order[++m] = $1 }
          if (!($2 in wseen)) { wseen[$2] = 1; worder[++w] = $2 } }
        END {
            for (i = 1; i <= m; i++) for (j = 1; j <= w; j++) {
                k = order[i] SUBSEP worder[j]; b = order[1] SUBSEP worder[j]
                t = tps[k] / n[k]; c = (tx[k] > 0) ? cpu[k] / tx[k] * 1000 : 0
                bt = tps[b] / n[b]; bc = (tx[b] > 0) ? cpu[b] / tx[b] * 1000 : 0
                printf "%-8s %-8s %10.1f %18.4f %10.3f %14.3f\n", order[i], worder[j], t, c,
                    (bt > 0) ? t / bt : 0, (bc > 0) ? c / bc : 0
            }
        }' "$sweep"
fi
