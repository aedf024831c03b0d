#!/usr/bin/env bash
# Shows that PgBouncer's Prometheus exporters read Lifeguard's admin console unchanged.
#
#   1. installs what is missing: Debian's prometheus-pgbouncer-exporter (1.7, Christopher Baines' exporter),
#      python3-pythonjsonlogger, python3-venv, postgresql-15, curl; and spreaker's prometheus-pgbouncer-exporter
#      2.1.2 from PyPI into a venv (it is the YAML/DSN exporter with the pgbouncer_stats_/pools_/databases_/
#      config_ families; Debian does not package it);
#   2. builds Lifeguard (scripts/build-release.sh);
#   3. starts a throwaway PostgreSQL and Lifeguard (md5 auth, stats user `exporter`, transaction pooling);
#   4. runs some pgbench traffic through Lifeguard so the counters are not zero;
#   5. runs spreaker's exporter against Lifeguard and checks the metric families it exports for `lgtest`,
#      then runs Debian's exporter unchanged and reports how it behaves (see the note at the end);
#   6. stops everything on exit.
# Ends with `exporter check: N passed, M failed` and exits non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3   # Debian's python, which has psycopg2, prometheus_client and yaml from the packages
SPREAKER_VERSION=2.1.2
VENV=${EXPORTER_VENV:-/tmp/lifeguard-exporter-venv-$SPREAKER_VERSION}

# --- 1. install -------------------------------------------------------------------------------------------
need=()
dpkg -s prometheus-pgbouncer-exporter >/dev/null 2>&1 || need+=(prometheus-pgbouncer-exporter)
dpkg -s python3-pythonjsonlogger >/dev/null 2>&1 || need+=(python3-pythonjsonlogger)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
# The package ships an init script and a systemd unit; neither may run beside this check.
if [ -x /etc/init.d/prometheus-pgbouncer-exporter ] && pgrep -f '^/usr/bin/python3 /usr/bin/prometheus-pgbouncer-exporter' >/dev/null; then
    /etc/init.d/prometheus-pgbouncer-exporter stop >/dev/null 2>&1 || true
fi
if [ ! -x "$VENV/bin/pgbouncer-exporter" ]; then
    echo "== installing spreaker prometheus-pgbouncer-exporter $SPREAKER_VERSION into $VENV"
    $PY -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --no-deps "prometheus-pgbouncer-exporter==$SPREAKER_VERSION"
fi

# --- 2. build ---------------------------------------------------------------------------------------------
echo "== building Lifeguard"
lifeguard=$(scripts/build-release.sh 2>/dev/null | tail -n 1)

# --- 3. PostgreSQL and Lifeguard --------------------------------------------------------------------------
work=$(mktemp -d /tmp/lifeguard-exporter.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    scripts/pg-cluster.sh stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); lg_port=$(free_port); spreaker_port=$(free_port); debian_port=$(free_port)

echo "== PostgreSQL on $pg_port, Lifeguard on $lg_port"
scripts/pg-cluster.sh start "$work/pg" "$pg_port" >/dev/null
cat >"$work/userlist.txt" <<USERS
"lg_md5" "md5pass"
"exporter" "exporterpass"
USERS
cat >"$work/lifeguard.ini" <<INI
[databases]
lgtest = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $lg_port
unix_socket_dir = $work
auth_type = md5
auth_file = $work/userlist.txt
stats_users = exporter
pool_mode = transaction
default_pool_size = 5
max_client_conn = 150
max_user_connections = 40
INI
"$lifeguard" "$work/lifeguard.ini" 2>"$work/lifeguard.log" &
pids+=($!)
for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p "$lg_port" && break; sleep 0.1; done

# --- 4. traffic -------------------------------------------------------------------------------------------
echo "SELECT 1;" >"$work/select1.sql"
PGPASSWORD=md5pass pgbench -n -f "$work/select1.sql" -c 8 -j 2 -t 200 -h 127.0.0.1 -p "$lg_port" -U lg_md5 lgtest \
    | grep -E '^(number of transactions actually processed|tps)'
# One client stays connected, so SHOW POOLS has a live row for lgtest/lg_md5 with a server in it.
PGPASSWORD=md5pass psql -X -q -h 127.0.0.1 -p "$lg_port" -U lg_md5 lgtest -c "BEGIN" -c "SELECT pg_sleep(60)" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# --- 5a. spreaker's exporter ------------------------------------------------------------------------------
cat >"$work/exporter.yml" <<YML
exporter_host: 127.0.0.1
exporter_port: $spreaker_port
pgbouncers:
  - dsn: postgresql://exporter:exporterpass@127.0.0.1:$lg_port/pgbouncer
    connect_timeout: 5
YML
"$VENV/bin/pgbouncer-exporter" --config "$work/exporter.yml" >"$work/spreaker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$spreaker_port/metrics" -o "$work/metrics.txt" && break; sleep 0.2; done

passed=0 failed=0
check() {   # check DESCRIPTION COMMAND...
    if "${@:2}"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
# metric NAME LABELS-REGEX CONDITION: a sample of NAME whose labels match and whose value satisfies CONDITION (awk)
metric() {
    awk -v name="$1" -v labels="$2" "
        index(\$0, name \"{\") == 1 && \$0 ~ labels { v = \$NF + 0; if ($3) found = 1 }
        index(\$0, name \" \") == 1 && labels == \"\" { v = \$NF + 0; if ($3) found = 1 }
        END { exit !found }" "$work/metrics.txt"
}
echo "== metrics from spreaker's exporter (lgtest and globals)"
grep -E '^pgbouncer_(up|config_)|^pgbouncer_[a-z_]+\{.*"lgtest"' "$work/metrics.txt" || true
db='database="lgtest"'
check "pgbouncer_up is 1 (every SHOW succeeded)" metric pgbouncer_up "" "v == 1"
for m in transactions_total queries_total received_bytes_total sent_bytes_total \
    queries_duration_microseconds_total transactions_duration_microseconds_total; do
    check "pgbouncer_stats_$m > 0" metric "pgbouncer_stats_$m" "$db" "v > 0"
done
check "pgbouncer_stats_waiting_duration_microseconds_total >= 0" \
    metric pgbouncer_stats_waiting_duration_microseconds_total "$db" "v >= 0"
pool="$db,user=\"lg_md5\"|user=\"lg_md5\".*$db"
check "pgbouncer_pools_client_active_connections >= 1" metric pgbouncer_pools_client_active_connections "$pool" "v >= 1"
check "pgbouncer_pools_server_active_connections >= 1" metric pgbouncer_pools_server_active_connections "$pool" "v >= 1"
for m in client_waiting_connections server_idle_connections server_used_connections server_testing_connections \
    server_login_connections client_maxwait_seconds; do
    check "pgbouncer_pools_$m present" metric "pgbouncer_pools_$m" "$pool" "v >= 0"
done
check "pgbouncer_databases_database_pool_size = 5" metric pgbouncer_databases_database_pool_size "$db" "v == 5"
check "pgbouncer_databases_database_current_connections >= 1" \
    metric pgbouncer_databases_database_current_connections "$db" "v >= 1"
check "pgbouncer_databases_database_max_connections = 0" metric pgbouncer_databases_database_max_connections "$db" "v == 0"
check "pgbouncer_config_max_client_conn = 150" metric pgbouncer_config_max_client_conn "" "v == 150"
check "pgbouncer_config_max_user_connections = 40" metric pgbouncer_config_max_user_connections "" "v == 40"
check "spreaker's exporter logged no errors" bash -c "! grep -Ei 'error|unable|exception' '$work/spreaker.log'"
# PgBouncer 1.24 renamed SHOW DATABASES' reserve_pool to reserve_pool_size; this exporter still reads
# reserve_pool and silently skips a missing column, so the family is absent, as with a real PgBouncer >= 1.24.
if ! grep -q '^pgbouncer_databases_database_reserve_pool_size' "$work/metrics.txt"; then
    echo "note pgbouncer_databases_database_reserve_pool_size absent: the exporter reads 'reserve_pool'," \
        "the console (like PgBouncer >= 1.24) sends 'reserve_pool_size'"
fi

# --- 5b. Debian's exporter, unchanged ---------------------------------------------------------------------
# It has no password option: libpq takes PGPASSWORD. Its collectors read SHOW STATS' total_requests, which
# PgBouncer removed in 1.8, so it stops at startup against PgBouncer 1.8 and later (Debian's own 1.18 too).
PGPASSWORD=exporterpass timeout 10 /usr/bin/prometheus-pgbouncer-exporter --host 127.0.0.1 --port "$debian_port" \
    --pgbouncer-host 127.0.0.1 --pgbouncer-port "$lg_port" --pgbouncer-user exporter >"$work/debian.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 30); do
    curl -sf "http://127.0.0.1:$debian_port/metrics" -o "$work/debian-metrics.txt" && break
    grep -q Traceback "$work/debian.log" && break
    sleep 0.2
done
if [ -s "$work/debian-metrics.txt" ]; then
    echo "== metrics from Debian's exporter"
    grep -E '^pgbouncer_' "$work/debian-metrics.txt"
else
    echo "note Debian's prometheus-pgbouncer-exporter 1.7 did not start:" \
        "$(grep -E '^[A-Za-z]+Error' "$work/debian.log" || tail -n 1 "$work/debian.log")" \
        "(the same as against PgBouncer >= 1.8)"
fi

echo "exporter check: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
    echo "--- spreaker exporter log"; tail -n 20 "$work/spreaker.log"
    echo "--- lifeguard log"; tail -n 20 "$work/lifeguard.log"
    exit 1
fi
