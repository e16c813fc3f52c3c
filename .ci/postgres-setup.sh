#!/usr/bin/env bash
# A throwaway PostgreSQL on 127.0.0.1 for the signal-log tests (tests/test_signal_log.py) and CI.
#
#   url=$(bash .ci/postgres-setup.sh [DIR])     # prints postgresql+psycopg://marketgpt:PASSWORD@127.0.0.1:PORT/marketgpt
#
# Installs Debian's postgresql when its binaries are missing (as root), initdb's a cluster in DIR (default
# /tmp/marketgpt-pg) owned by the postgres user when run as root (the server refuses to run as root), starts it on a
# free port on 127.0.0.1 only, creates the database and role, and writes the URL to DIR/url. Idempotent: a server
# already running in DIR is reused. Stop it with: pg_ctl -D DIR/data stop (as the same user).
set -euo pipefail
DIR=${1:-/tmp/marketgpt-pg}
log() { echo "postgres-setup: $*" >&2; }
die() { echo "postgres-setup: error: $*" >&2; exit 1; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
if [ -z "$(bindir)" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed (apt-get install postgresql as root)"
    log "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
fi
BIN=$(bindir)
[ -x "$BIN/initdb" ] || die "no initdb under /usr/lib/postgresql/*/bin"

if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" --shell /bin/false postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

if [ -s "$DIR/url" ] && as_pg "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    cat "$DIR/url"; exit 0
fi
rm -rf "$DIR"; mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
as_pg "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off" start >/dev/null \
    || { tail -n 20 "$DIR/server.log" >&2; die "the server did not start"; }
as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE marketgpt LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE marketgpt OWNER marketgpt" >/dev/null
URL="postgresql+psycopg://marketgpt:$PASSWORD@127.0.0.1:$PORT/marketgpt"
echo "$URL" >"$DIR/url"
log "up on 127.0.0.1:$PORT (data in $DIR/data)"
echo "$URL"
