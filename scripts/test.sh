#!/usr/bin/env bash
# Runs every test of Lifeguard on this machine, installing what is missing first:
#   1. builds Lifeguard and its tests;
#   2. starts a throwaway PostgreSQL 15 cluster (scripts/pg-cluster.sh) with md5, SCRAM and clear-text roles;
#   3. smoke-tests the real binary with psql and pgbench (simple, extended, prepared, connect-per-transaction)
#      and with the drivers psycopg 3, asyncpg (installed with pip when missing) and pgJDBC (Debian's);
#   4. runs `swift test`: unit tests, handler tests and the integration tests, which start their own
#      Lifeguard processes in front of that cluster and drive them with libpq;
#   5. builds the libFuzzer harness and runs each target for 5 s, then a 20 s chaos run (its own cluster).
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_install+=(postgresql-15)
command -v psql >/dev/null || need_install+=(postgresql-client-15)
command -v pgbench >/dev/null || need_install+=(postgresql-contrib)
[ -f /usr/include/postgresql/libpq-fe.h ] || need_install+=(libpq-dev)
# OpenSSL: the library Lifeguard's TLS is built on, and the command the TLS tests make certificates with.
[ -f /usr/include/openssl/ssl.h ] || need_install+=(libssl-dev)
command -v openssl >/dev/null || need_install+=(openssl)
command -v pkg-config >/dev/null || need_install+=(pkg-config)
# ss and ip (network namespaces) are used by the keepalive and packet-dropping-host tests.
command -v ss >/dev/null && command -v ip >/dev/null || need_install+=(iproute2)
python3 -m pip --version >/dev/null 2>&1 || need_install+=(python3-pip)
command -v javac >/dev/null || need_install+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need_install+=(libpostgresql-jdbc-java)
if [ ${#need_install[@]} -gt 0 ]; then
    echo "== installing ${need_install[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

echo "== building"
swift build --build-tests 2>&1 | tail -n 3
bin_path=$(swift build --show-bin-path)

work=$(mktemp -d /tmp/lifeguard-test.XXXXXX)
chmod 755 "$work"
pg_port=$(scripts/free-port.sh)
lifeguard_port=$((pg_port + 1))
lifeguard_pid=""
cleanup() {
    [ -n "$lifeguard_pid" ] && kill "$lifeguard_pid" 2>/dev/null && wait "$lifeguard_pid" 2>/dev/null
    scripts/pg-cluster.sh stop "$work/pg" || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting PostgreSQL on port $pg_port"
# With TLS on, so the tests of Lifeguard's server_tls_* have a PostgreSQL to verify.
PG_SSL=1 scripts/pg-cluster.sh start "$work/pg" "$pg_port"

echo "== smoke test: psql and pgbench through Lifeguard"
cat >"$work/userlist.txt" <<USERS
"lg_md5" "md5pass"
"lg_scram" "scrampass"
USERS
cat >"$work/lifeguard.ini" <<INI
[databases]
lgbench = host=127.0.0.1 port=$pg_port
lgtest = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $lifeguard_port
unix_socket_dir = $work
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = 10
max_client_conn = 200
; pgJDBC sends it at startup; PgBouncer users list it here too
ignore_startup_parameters = extra_float_digits
INI
"$bin_path/lifeguard" "$work/lifeguard.ini" 2>"$work/lifeguard.log" &
lifeguard_pid=$!
for _ in $(seq 1 100); do
    pg_isready -q -h 127.0.0.1 -p "$lifeguard_port" && break
    sleep 0.1
done
export PGPASSWORD=scrampass
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$lifeguard_port" -U lg_scram -d lgtest \
    -c "SELECT 'psql through lifeguard: ' || version()" -tA
pgbench -i -q -s 1 -h "$work/pg" -p "$pg_port" -U postgres lgbench >/dev/null 2>&1
psql -X -q -h "$work/pg" -p "$pg_port" -U postgres -d lgbench \
    -c "GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC" >/dev/null
# -M prepared with multi-statement transactions runs one client per thread: pgbench prepares with a
# blocking PQprepare, which would wait for a server held by another client of the same thread.
for mode in "-S -c 20 -j 2" "-S -M extended -c 20 -j 2" "-M extended -c 20 -j 2" "-S -C -c 20 -j 2" \
    "-S -M prepared -c 20 -j 2" "-M prepared -c 8 -j 8"; do
    # pgbench exits non-zero when a client fails, which fails this script.
    out=$(pgbench -n $mode -T 3 -h 127.0.0.1 -p "$lifeguard_port" -U lg_scram lgbench 2>&1) || {
        echo "$out"
        echo "pgbench $mode failed; Lifeguard log:"
        tail -n 50 "$work/lifeguard.log"
        exit 1
    }
    echo "pgbench $mode: $(echo "$out" | grep -E '^tps' | head -n 1)"
done
echo "== Python drivers (psycopg 3, asyncpg) through Lifeguard in transaction mode"
if ! python3 -c "import psycopg, asyncpg" 2>/dev/null; then
    python3 -m pip install --quiet psycopg psycopg-binary asyncpg 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages psycopg psycopg-binary asyncpg
fi
LIFEGUARD_DSN="host=127.0.0.1 port=$lifeguard_port user=lg_scram password=scrampass dbname=lgtest" \
    POSTGRES_DSN="host=$work/pg port=$pg_port user=postgres dbname=lgtest" \
    python3 Tests/Drivers/python_drivers.py || {
        echo "Python driver checks failed; Lifeguard log:"
        tail -n 50 "$work/lifeguard.log"
        exit 1
    }
echo "== pgJDBC through Lifeguard in transaction mode"
LIFEGUARD_JDBC_URL="jdbc:postgresql://127.0.0.1:$lifeguard_port/lgtest" LIFEGUARD_USER=lg_scram \
    LIFEGUARD_PASSWORD=scrampass POSTGRES_SOCKET_DIR="$work/pg" POSTGRES_PORT="$pg_port" \
    java -cp /usr/share/java/postgresql.jar Tests/Drivers/JdbcDriverCheck.java || {
        echo "JDBC checks failed; Lifeguard log:"
        tail -n 50 "$work/lifeguard.log"
        exit 1
    }
kill "$lifeguard_pid"
wait "$lifeguard_pid" 2>/dev/null || true
lifeguard_pid=""
unset PGPASSWORD

echo "== swift test"
export LIFEGUARD_TEST_PGPORT=$pg_port LIFEGUARD_TEST_PGDIR="$work/pg" LIFEGUARD_BINARY="$bin_path/lifeguard"
swift test --skip-build 2>&1 | grep -vE '^(◇|↳)'

echo "== integration tests again with threads = 2 (every Lifeguard they start runs two engine threads)"
LIFEGUARD_TEST_THREADS=2 swift test --skip-build --filter IntegrationTests 2>&1 | grep -vE '^(◇|↳)'

echo "== fuzz smoke: every libFuzzer target for 5 s (scripts/fuzz.sh)"
scripts/fuzz.sh 5

echo "== chaos: 20 s of killed backends, PostgreSQL restarts, reloads and vanishing clients (scripts/chaos.sh)"
scripts/chaos.sh 20
echo "== chaos again with threads = 2: servers moving between threads while all that happens"
CHAOS_THREADS=2 scripts/chaos.sh 20

# Against the build the tests above used (LIFEGUARD_BINARY): a release build would take CI past its time budget.
echo "== PgBouncer's own test suite (scripts/pgbouncer-suite.sh; known failures listed in Tests/PgBouncerSuite)"
scripts/pgbouncer-suite.sh
echo "== its limits and console tests again with threads = 2"
SUITE_THREADS=2 scripts/pgbouncer-suite.sh test/test_limits.py test/test_admin.py
