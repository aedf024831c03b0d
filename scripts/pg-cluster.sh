#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL cluster for tests and benchmarks.
#
#   scripts/pg-cluster.sh start DIR PORT   initdb in DIR, start on 127.0.0.1:PORT and a Unix socket in DIR,
#                                          create the test roles and databases
#   scripts/pg-cluster.sh stop DIR         stop it and delete DIR
#
# PostgreSQL refuses to run as root, so when run as root the server runs as the `postgres` user.
# Roles: lg_md5/md5pass (md5 hash, md5 auth), lg_scram/scrampass (SCRAM secret, scram-sha-256 auth),
# lg_clear/clearpass (clear-text "password" auth), lg_trust (trust). Databases: lgtest, lgbench.
#
# PG_SSL=1 also turns TLS on, with a certificate for localhost and 127.0.0.1 signed by a CA made for the
# cluster (DIR/tls/ca.crt, for clients that verify it), and adds the role lg_tls, which may log in over
# TLS only (trust).
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
action=${1:?usage: pg-cluster.sh start DIR PORT | stop DIR}
dir=${2:?missing DIR}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/bash -c "cd / && $*"
    else
        bash -c "$*"
    fi
}

case "$action" in
start)
    port=${3:?missing PORT}
    mkdir -p "$dir"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_postgres "$PGBIN/initdb -D '$dir/data' -A trust -U postgres >'$dir/initdb.log' 2>&1"
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
# Replication connections through Lifeguard (physical and logical) are tested too.
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
CONF
    tls_rules=""
    if [ "${PG_SSL:-0}" = 1 ]; then
        tls="$dir/tls"
        mkdir -p "$tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -keyout "$tls/ca.key" -out "$tls/ca.crt" -subj "/CN=Lifeguard test PostgreSQL CA" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$tls/server.key" -out "$tls/server.csr" -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/server.ext"
        openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
            -days 30 -extfile "$tls/server.ext" -out "$tls/server.crt" 2>/dev/null
        chmod 755 "$tls"
        chmod 600 "$tls/server.key"
        [ "$(id -u)" = 0 ] && chown postgres: "$tls/server.key"
        cat >>"$dir/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
CONF
        tls_rules="hostssl all lg_tls 127.0.0.1/32 trust
host all lg_tls 127.0.0.1/32 reject"
    fi
    cat >"$dir/data/pg_hba.conf" <<HBA
local all all trust
local replication all trust
host replication postgres 127.0.0.1/32 trust
$tls_rules
host all lg_md5   127.0.0.1/32 md5
host all lg_scram 127.0.0.1/32 scram-sha-256
host all lg_clear 127.0.0.1/32 password
host all all      127.0.0.1/32 trust
HBA
    as_postgres "$PGBIN/pg_ctl -D '$dir/data' -l '$dir/server.log' -w start >/dev/null"
    psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres <<SQL
SET password_encryption = 'md5';
CREATE ROLE lg_md5 LOGIN PASSWORD 'md5pass';
SET password_encryption = 'scram-sha-256';
CREATE ROLE lg_scram LOGIN PASSWORD 'scrampass';
CREATE ROLE lg_clear LOGIN PASSWORD 'clearpass';
CREATE ROLE lg_trust LOGIN;
CREATE ROLE lg_tls LOGIN;
CREATE DATABASE lgtest;
CREATE DATABASE lgbench;
GRANT ALL ON DATABASE lgtest TO PUBLIC;
\c lgtest
GRANT ALL ON SCHEMA public TO PUBLIC;
\c lgbench
GRANT ALL ON SCHEMA public TO PUBLIC;
SQL
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_postgres "$PGBIN/pg_ctl -D '$dir/data' -m immediate -w stop >/dev/null 2>&1" || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: pg-cluster.sh start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
