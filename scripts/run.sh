#!/usr/bin/env bash
# Builds Lifeguard (release) and runs it in the foreground.
#
#   scripts/run.sh CONFIG [OPTIONS]   build, then exec `lifeguard CONFIG [OPTIONS]`
#   scripts/run.sh                    build, then run Lifeguard with a generated config:
#
#     * if PGHOST and/or PGPORT are set and `pg_isready` reaches that PostgreSQL, Lifeguard fronts it:
#       `* = host=$PGHOST port=$PGPORT`, auth_type = trust, auth_file listing $PGUSER (default postgres)
#       with $PGPASSWORD (if set) so Lifeguard can log in to the server as that user;
#     * otherwise it installs postgresql-15 if missing, starts a throwaway cluster on 127.0.0.1:54329
#       with scripts/pg-cluster.sh (roles lg_md5/md5pass, lg_scram/scrampass, lg_trust; databases
#       lgtest, lgbench), and Lifeguard fronts it with auth_type = md5 (users lg_md5/md5pass,
#       lg_scram/scrampass, lg_trust/trustpass).
#
#     Either way Lifeguard listens on 127.0.0.1:6432 (LIFEGUARD_PORT overrides) and on a Unix socket in a
#     temp dir, with pool_mode = transaction. Ctrl-C stops Lifeguard and, if one was started, the cluster;
#     the temp dir is removed.
#
# Environment: LIFEGUARD_PORT (default 6432), LIFEGUARD_PG_PORT (throwaway cluster port, default 54329),
# PGHOST, PGPORT, PGUSER, PGPASSWORD (see above), PGBIN (default /usr/lib/postgresql/15/bin).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN
LIFEGUARD_PORT=${LIFEGUARD_PORT:-6432}
pg_port=${LIFEGUARD_PG_PORT:-54329}
LIFEGUARD=""

log() { printf '[run] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

build() {
    command -v swift >/dev/null || die "swift is not installed (needed to build Lifeguard)"
    log "building Lifeguard (release)"
    LIFEGUARD=$("$repo/scripts/build-release.sh")
    [ -x "$LIFEGUARD" ] || die "build did not produce $LIFEGUARD"
}

# ---------------------------------------------------------------------------------------------
# With a config file: just build and hand over.
# ---------------------------------------------------------------------------------------------
if [ $# -gt 0 ]; then
    case "$1" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    esac
    build
    exec "$LIFEGUARD" "$@"
fi

# ---------------------------------------------------------------------------------------------
# Without one: generate a config in a temp dir (removed on exit).
# ---------------------------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/lifeguard-run.XXXXXX)
chmod 755 "$tmp"            # the cluster runs as the postgres user and puts its socket under here
pg_dir="$tmp/pg"            # scripts/pg-cluster.sh creates and deletes it
cluster_started=0
cleanup() {
    local rc=$?
    set +e
    if [ "$cluster_started" = 1 ]; then
        log "stopping the throwaway PostgreSQL"
        "$repo/scripts/pg-cluster.sh" stop "$pg_dir"
    fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v pg_isready >/dev/null && command -v psql >/dev/null || {
    log "installing postgresql-client"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
}
port_in_use "$LIFEGUARD_PORT" &&
    die "port $LIFEGUARD_PORT is already in use (a system pgbouncer?); set LIFEGUARD_PORT to another port"

config="$tmp/lifeguard.ini"
userlist="$tmp/userlist.txt"
common_settings="listen_addr = 127.0.0.1
listen_port = $LIFEGUARD_PORT
unix_socket_dir = $tmp
auth_file = $userlist
pool_mode = transaction"

if { [ -n "${PGHOST:-}" ] || [ -n "${PGPORT:-}" ]; } &&
    pg_isready -q -h "${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" -t 3; then
    # --- Front an existing PostgreSQL -------------------------------------------------------
    server_host=${PGHOST:-127.0.0.1}
    server_port=${PGPORT:-5432}
    user=${PGUSER:-postgres}
    log "using the PostgreSQL at host=$server_host port=$server_port (PGHOST/PGPORT)"
    # auth_type = trust still requires the user to be listed; the password (if any) is what
    # Lifeguard uses to log in to the server.
    printf '"%s" "%s"\n' "$user" "${PGPASSWORD:-}" >"$userlist"
    chmod 600 "$userlist"
    cat >"$config" <<INI
[databases]
* = host=$server_host port=$server_port

[pgbouncer]
$common_settings
auth_type = trust
admin_users = $user
INI
    connect_help="  psql -h 127.0.0.1 -p $LIFEGUARD_PORT -U $user DBNAME
  psql -h 127.0.0.1 -p $LIFEGUARD_PORT -U $user pgbouncer      (admin console: SHOW POOLS, SHOW STATS, ...)
  (auth_type = trust: no password asked; only user \"$user\" is in the auth_file)"
else
    # --- Start a throwaway PostgreSQL ---------------------------------------------------------
    if [ -n "${PGHOST:-}" ] || [ -n "${PGPORT:-}" ]; then
        log "no PostgreSQL answers at host=${PGHOST:-127.0.0.1} port=${PGPORT:-5432}; starting a throwaway one"
    fi
    if [ ! -x "$PGBIN/initdb" ]; then
        log "installing postgresql-15"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
    fi
    port_in_use "$pg_port" && die "port $pg_port is already in use; set LIFEGUARD_PG_PORT to another port"
    log "starting a throwaway PostgreSQL 15 on 127.0.0.1:$pg_port (data in $pg_dir)"
    cluster_started=1
    "$repo/scripts/pg-cluster.sh" start "$pg_dir" "$pg_port" >&2
    # lg_trust needs no password at PostgreSQL, but md5 auth at Lifeguard (as at PgBouncer) refuses an
    # empty password, so it gets one here that only Lifeguard checks.
    cat >"$userlist" <<USERS
"lg_md5" "md5pass"
"lg_scram" "scrampass"
"lg_trust" "trustpass"
USERS
    chmod 600 "$userlist"
    cat >"$config" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
$common_settings
auth_type = md5
admin_users = lg_md5
INI
    connect_help="  PGPASSWORD=md5pass   psql -h 127.0.0.1 -p $LIFEGUARD_PORT -U lg_md5   lgtest
  PGPASSWORD=scrampass psql -h 127.0.0.1 -p $LIFEGUARD_PORT -U lg_scram lgtest
  PGPASSWORD=trustpass psql -h 127.0.0.1 -p $LIFEGUARD_PORT -U lg_trust lgtest
  admin console: PGPASSWORD=md5pass psql -h 127.0.0.1 -p $LIFEGUARD_PORT -U lg_md5 pgbouncer   (SHOW POOLS; ...)
  pgbench:  PGPASSWORD=md5pass pgbench -i -s 1 -h 127.0.0.1 -p $LIFEGUARD_PORT -U lg_md5 lgbench
            PGPASSWORD=md5pass pgbench -n -S -c 10 -T 10 -h 127.0.0.1 -p $LIFEGUARD_PORT -U lg_md5 lgbench
  (databases lgtest and lgbench; PostgreSQL itself is on 127.0.0.1:$pg_port)"
fi

build

cat >&2 <<MSG

================================================================================
Lifeguard is starting on 127.0.0.1:$LIFEGUARD_PORT (config: $config)
Connect with:
$connect_help
Press Ctrl-C to stop.
================================================================================

MSG

# Not exec: the EXIT trap must still stop the cluster and remove the temp dir. Lifeguard runs as a
# child we wait for; Ctrl-C (SIGINT) or SIGTERM to this script is forwarded to it as SIGTERM, and when it
# has exited the EXIT trap cleans up.
"$LIFEGUARD" "$config" &
lg_pid=$!
trap 'kill -TERM "$lg_pid" 2>/dev/null' INT TERM
set +e
rc=0
while kill -0 "$lg_pid" 2>/dev/null; do
    wait "$lg_pid"      # returns early (status > 128) when a trapped signal arrives; loop until it is gone
    rc=$?
done
exit $rc
