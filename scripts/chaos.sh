#!/usr/bin/env bash
# Chaos test: many clients insert numbered rows through Lifeguard (transaction mode, prepared statements
# on, 30 clients onto a pool of 5) while backends are terminated, PostgreSQL restarts (fast and
# immediate), Lifeguard is reloaded (SIGHUP and console RELOAD) and raw clients vanish mid-message.
# Then it checks that no commit was lost, nothing failed or abandoned was committed, no client got
# another's reply, Lifeguard's RSS came back down, and Lifeguard still answers with no clients left over.
#
#   scripts/chaos.sh [SECONDS]      default 60; the whole run takes about SECONDS + 15 s
#
# Environment: LIFEGUARD_BINARY (default: `swift build --product lifeguard`), PGBIN
# (default /usr/lib/postgresql/15/bin), CHAOS_CLIENTS (30), CHAOS_RAW_CLIENTS (3), CHAOS_SEED,
# CHAOS_RSS_SLACK_MB (20), CHAOS_POOL_SIZES ("5,4"), CHAOS_KEEP=1 (keep the logs even when it passes),
# CHAOS_VERBOSE=1 (print who saw each kind of error, and when), CHAOS_THREADS (Lifeguard's `threads`, 1).
# Details of each check: Tests/Chaos/chaos.py.
# Starts its own PostgreSQL cluster (scripts/pg-cluster.sh); everything is stopped on exit. On failure the
# temp dir with Lifeguard's log and the timeline of chaos actions is kept and its path printed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN

need_install=()
[ -x "$PGBIN/postgres" ] || need_install+=(postgresql-15)
command -v psql >/dev/null || need_install+=(postgresql-client-15)
python3 -m pip --version >/dev/null 2>&1 || need_install+=(python3-pip)
if [ ${#need_install[@]} -gt 0 ]; then
    echo "== installing ${need_install[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
if ! python3 -c "import psycopg" 2>/dev/null; then
    python3 -m pip install --quiet psycopg psycopg-binary 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages psycopg psycopg-binary
fi

if [ -n "${LIFEGUARD_BINARY:-}" ]; then
    binary=$LIFEGUARD_BINARY
else
    echo "== building"
    swift build --product lifeguard 2>&1 | tail -n 3
    binary="$(swift build --show-bin-path)/lifeguard"
fi
[ -x "$binary" ] || { echo "no Lifeguard binary at $binary" >&2; exit 1; }

work=$(mktemp -d /tmp/lifeguard-chaos.XXXXXX)
chmod 755 "$work"   # the cluster runs as the postgres user and keeps its socket under here
pg_port=$(scripts/free-port.sh)
lifeguard_port=$((pg_port + 1))
lifeguard_pid=""
rc=1
cleanup() {
    set +e
    if [ -n "$lifeguard_pid" ] && kill -0 "$lifeguard_pid" 2>/dev/null; then
        # SIGTERM waits for clients; a second one exits at once. Bounded either way.
        kill -TERM "$lifeguard_pid"
        for _ in $(seq 1 30); do kill -0 "$lifeguard_pid" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$lifeguard_pid" 2>/dev/null
        sleep 0.5
        kill -KILL "$lifeguard_pid" 2>/dev/null
        wait "$lifeguard_pid" 2>/dev/null
    fi
    { [ "$rc" != 0 ] || [ -n "${CHAOS_KEEP:-}" ]; } && cp "$work/pg/server.log" "$work/postgres.log" 2>/dev/null
    scripts/pg-cluster.sh stop "$work/pg"
    if [ "$rc" = 0 ] && [ -z "${CHAOS_KEEP:-}" ]; then
        rm -rf "$work"
    else
        echo "chaos: logs kept in $work (lifeguard.log, postgres.log, chaos.out, chaos-actions.log, lifeguard.ini)"
    fi
}
trap cleanup EXIT

echo "== starting PostgreSQL on port $pg_port"
scripts/pg-cluster.sh start "$work/pg" "$pg_port"
# pg-cluster.sh turns synchronous_commit off for speed; then an immediate restart can lose commits
# PostgreSQL already acknowledged, which would read as lost commits here. fsync stays off: the OS does
# not crash, so written WAL survives.
psql -X -q -v ON_ERROR_STOP=1 -h "$work/pg" -p "$pg_port" -U postgres -d lgtest >/dev/null <<'SQL'
ALTER SYSTEM SET synchronous_commit = on;
SELECT pg_reload_conf();
CREATE TABLE chaos (client int, seq int, k int, PRIMARY KEY (client, seq, k));
GRANT ALL ON chaos TO PUBLIC;
SQL

cat >"$work/userlist.txt" <<USERS
"lg_md5" "md5pass"
USERS
# md5 keeps the raw-socket clients' login simple. server_login_retry = 1: with the default 15 s every
# PostgreSQL restart would fail all clients for 15 s. max_prepared_statements is below the number of
# distinct statements the clients prepare, so the per-server LRU evicts under load too.
cat >"$work/lifeguard.ini" <<INI
[databases]
lgtest = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $lifeguard_port
unix_socket_dir = $work
auth_type = md5
auth_file = $work/userlist.txt
admin_users = lg_md5
pool_mode = transaction
default_pool_size = 5
max_client_conn = 200
max_prepared_statements = 6
server_login_retry = 1
server_connect_timeout = 5
threads = ${CHAOS_THREADS:-1}
INI

echo "== starting Lifeguard ($binary) on port $lifeguard_port"
"$binary" "$work/lifeguard.ini" 2>"$work/lifeguard.log" &
lifeguard_pid=$!
for _ in $(seq 1 100); do
    pg_isready -q -h 127.0.0.1 -p "$lifeguard_port" && break
    sleep 0.1
done
pg_isready -q -h 127.0.0.1 -p "$lifeguard_port" || {
    echo "chaos: Lifeguard did not start listening; its log:"
    tail -n 20 "$work/lifeguard.log"
    exit 1
}

echo "== chaos for $seconds s"
started=$(date +%s)
set +e
LIFEGUARD_PORT=$lifeguard_port LIFEGUARD_SOCKET_DIR=$work LIFEGUARD_PID=$lifeguard_pid \
    LIFEGUARD_INI=$work/lifeguard.ini PG_PORT=$pg_port PG_DIR=$work/pg CHAOS_SECONDS=$seconds \
    CHAOS_ACTIONS_LOG=$work/chaos-actions.log python3 Tests/Chaos/chaos.py | tee "$work/chaos.out"
rc=${PIPESTATUS[0]}
set -e
echo "chaos: driver took $(($(date +%s) - started)) s"
if [ "$rc" != 0 ]; then
    if ! kill -0 "$lifeguard_pid" 2>/dev/null; then
        status=0
        wait "$lifeguard_pid" || status=$?
        echo "chaos: Lifeguard exited with status $status"
    fi
    # Its LOG lines are mostly logins and closes; warnings and errors say more.
    echo "chaos: Lifeguard's last warnings and errors:"
    grep -v '\] LOG ' "$work/lifeguard.log" | tail -n 30 || true
    echo "chaos: last lines of Lifeguard's log:"
    tail -n 15 "$work/lifeguard.log"
    echo "chaos: last lines of PostgreSQL's log:"
    tail -n 15 "$work/pg/server.log" 2>/dev/null || true
fi
exit "$rc"
