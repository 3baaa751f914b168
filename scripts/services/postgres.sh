#!/usr/bin/env bash
# PostgreSQL (Debian's packages) with its own data dir in $CHATBRIDGE_SERVICES_DIR/postgres,
# listening on 127.0.0.1:5432 only (unix socket in <cache>/postgres/run).
# Creates role chatbridge/chatbridge (LOGIN CREATEDB) and database chatbridge.
# usage: postgres.sh start|stop|status
set -euo pipefail
_svc_name=postgres
# shellcheck source=_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

P="$SERVICES_DIR/postgres"
DATA="$P/data"
SOCK="$P/run"
LOGFILE="$P/postgres.log"
PORT=5432
DB_USER=chatbridge
DB_PASSWORD=chatbridge
DB_NAME=chatbridge
PG_OS_USER=postgres   # server user when this script runs as root (postgres refuses to run as root)

PGBIN=""
RUNAS=()

find_pgbin() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/postgres" && -x "$d/initdb" && -x "$d/pg_ctl" ]] || continue
        best="$d"   # glob order is lexical: 15 < 16 < 17 ... the last one wins
    done
    echo "$best"
}

ensure_installed() {
    PGBIN="$(find_pgbin)"
    [[ -n "$PGBIN" ]] && return 0
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed; as root run: apt-get update && apt-get install -y postgresql"
    log "PostgreSQL binaries missing: apt-get update && apt-get install -y postgresql ..."
    DEBIAN_FRONTEND=noninteractive apt-get update -q >"$SERVICES_DIR/apt.log" 2>&1 \
        || { tail -n 20 "$SERVICES_DIR/apt.log" >&2; die "apt-get update failed (see $SERVICES_DIR/apt.log)"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >>"$SERVICES_DIR/apt.log" 2>&1 \
        || { tail -n 20 "$SERVICES_DIR/apt.log" >&2; die "apt-get install postgresql failed (see $SERVICES_DIR/apt.log)"; }
    PGBIN="$(find_pgbin)"
    [[ -n "$PGBIN" ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin/postgres found"
    # Debian's package creates and may start a system cluster "main" on 5432; we just installed it,
    # so stop it to free the port for our own data dir.
    if command -v pg_lsclusters >/dev/null; then
        local ver name port status
        while read -r ver name port status _; do
            if [[ "$port" == "$PORT" && "$status" == online* ]]; then
                log "stopping the system cluster $ver/$name that the package install just started on $PORT"
                pg_ctlcluster "$ver" "$name" stop || true
            fi
        done < <(pg_lsclusters -h 2>/dev/null || true)
    fi
}

# Decide how to run server-side commands (initdb, pg_ctl, postgres) as a non-root user.
setup_runas() {
    if [[ $EUID -ne 0 ]]; then
        RUNAS=()
        return 0
    fi
    id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' missing (it comes with Debian's postgresql package)"
    chown "$PG_OS_USER:" "$P"
    local base=(setpriv "--reuid=$PG_OS_USER" "--regid=$PG_OS_USER" --init-groups)
    if (cd / && "${base[@]}" -- ls "$P" >/dev/null 2>&1); then
        RUNAS=("${base[@]}" --)
        return 0
    fi
    # The cache dir usually sits under /root (mode 700), which the postgres user cannot traverse.
    # Instead of changing /root's permissions, give the server processes CAP_DAC_READ_SEARCH
    # (directory search only; they still run as '$PG_OS_USER', which postgres requires).
    local caps=(--inh-caps=+dac_read_search --ambient-caps=+dac_read_search)
    if (cd / && "${base[@]}" "${caps[@]}" -- ls "$P" >/dev/null 2>&1); then
        RUNAS=("${base[@]}" "${caps[@]}" --)
        return 0
    fi
    die "user '$PG_OS_USER' cannot reach $P; set CHATBRIDGE_SERVICES_DIR to a path it can traverse"
}

as_pg() { (cd / && "${RUNAS[@]}" "$@"); }

server_pid() { pidfile_pid "$DATA/postmaster.pid" "postgres"; }

accepting() {
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1
}

explain_port_conflict() {
    local owner msg="127.0.0.1:$PORT is already in use, not by this script's server"
    owner="$(port_owner "$PORT")"
    [[ -n "$owner" ]] && msg+=" (listener: $owner)"
    if command -v pg_lsclusters >/dev/null; then
        local ver name port status
        while read -r ver name port status _; do
            if [[ "$port" == "$PORT" && "$status" == online* ]]; then
                msg+=$'\n'"A system PostgreSQL cluster $ver/$name is running on port $PORT."
                msg+=$'\n'"Stop it with: pg_ctlcluster $ver $name stop   (or use that server yourself)"
            fi
        done < <(pg_lsclusters -h 2>/dev/null || true)
    fi
    die "$msg"
}

sql_super() {
    # As the bootstrap superuser over the unix socket (trust auth, socket dir is private).
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres
}

ensure_role_and_db() {
    sql_super <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  ELSE
    ALTER ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  END IF;
END
\$\$;
-- the tests drop their throwaway databases WITH (FORCE), which must also stop an autovacuum worker busy in one
GRANT pg_signal_backend TO $DB_USER;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
SQL
}

write_conf() {
    # Rewritten at every start so edits to this script take effect; included from postgresql.conf.
    cat >"$DATA/chatbridge.conf" <<CONF
# Generated by scripts/services/postgres.sh -- do not edit, changes are overwritten.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
unix_socket_permissions = 0700
max_connections = 100
# Throwaway test server: trade durability for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] %q%u@%d '
CONF
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER:" "$DATA/chatbridge.conf"; fi
    grep -q "^include_if_exists = 'chatbridge.conf'" "$DATA/postgresql.conf" \
        || echo "include_if_exists = 'chatbridge.conf'" >>"$DATA/postgresql.conf"
}

do_start() {
    mkdir -p "$P"
    ensure_installed
    setup_runas
    local pid
    pid="$(server_pid)"
    if [[ -n "$pid" ]] && accepting; then
        log "already running (pid $pid) on 127.0.0.1:$PORT"
        ensure_role_and_db  # a server started by an older version of this script gets today's role and grants
        return 0
    fi
    if [[ -z "$pid" ]] && port_open "$PORT"; then
        explain_port_conflict
    fi

    if (( ${#SOCK} + 16 > 107 )); then
        die "socket path $SOCK is too long for a unix socket; use a shorter CHATBRIDGE_SERVICES_DIR"
    fi
    mkdir -p "$SOCK"
    chmod 700 "$SOCK"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER:" "$SOCK"; fi

    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        log "initdb $DATA ($("$PGBIN/postgres" --version))"
        rm -rf "$DATA"
        if ! as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
                --encoding=UTF8 --locale=C.UTF-8 >"$P/initdb.log" 2>&1; then
            tail -n 20 "$P/initdb.log" >&2
            die "initdb failed (see $P/initdb.log)"
        fi
    fi
    write_conf

    if [[ -z "$pid" ]]; then
        if [[ -f "$LOGFILE" ]]; then mv -f "$LOGFILE" "$LOGFILE.1"; fi
        log "starting server (log: $LOGFILE)"
        if ! as_pg "$PGBIN/pg_ctl" start -w -t 120 -D "$DATA" -l "$LOGFILE" >"$P/pg_ctl.log" 2>&1; then
            cat "$P/pg_ctl.log" >&2
            echo "----- last 30 lines of $LOGFILE -----" >&2
            tail -n 30 "$LOGFILE" >&2 || true
            die "server did not start"
        fi
    fi
    local i
    for ((i = 0; i < 240; i++)); do
        accepting && break
        sleep 0.5
    done
    accepting || { tail -n 30 "$LOGFILE" >&2; die "server not accepting connections on 127.0.0.1:$PORT"; }

    ensure_role_and_db
    log "ready on 127.0.0.1:$PORT (pid $(server_pid)): postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"
}

kill_server() {
    local pid="$1" i
    # SIGINT = postgres "fast" shutdown (what pg_ctl stop -m fast sends); works without pg_ctl's root check.
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        pid_alive "$pid" "postgres" || break
        sleep 0.2
    done
    if pid_alive "$pid" "postgres"; then
        stop_pid "$pid" "postgres" 10   # SIGTERM (smart), then SIGKILL
    fi
}

# postmaster.pid belongs to the server: svc_stop gets no pidfile to remove.
do_stop() {
    PGBIN="$(find_pgbin)"
    svc_stop server_pid kill_server
}

log_stopped() {
    if port_open "$PORT"; then
        log "stopped (but 127.0.0.1:$PORT is served by something else: $(port_owner "$PORT"))"
    else
        log "stopped"
    fi
}

do_status() {
    PGBIN="$(find_pgbin)"
    [[ -n "$PGBIN" ]] || { log "not installed"; return 3; }
    svc_status server_pid accepting ": postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME" \
        "not accepting on $PORT" "$LOGFILE" log_stopped
}

svc_main "$@"
