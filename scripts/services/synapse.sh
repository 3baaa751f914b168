#!/usr/bin/env bash
# Matrix Synapse homeserver (server name "localhost", SQLite) on http://127.0.0.1:8008, client + admin API.
# Synapse is AGPL-3.0: it lives in its own venv under $CHATBRIDGE_SERVICES_DIR/synapse, never in the
# project's venv. On start it ensures the admin bridge user @chatbridge-bot:localhost and writes its
# access token to <cache>/synapse/bot_token (mode 600).
# CHATBRIDGE_SYNAPSE_PORT runs a second one beside it (with its own CHATBRIDGE_SERVICES_DIR);
# CHATBRIDGE_SYNAPSE_DATABASE=postgres keeps its data in the local PostgreSQL instead (database
# CHATBRIDGE_SYNAPSE_PG_DATABASE, default "synapse", C collation) -- measured slower here, see README.md.
# usage: synapse.sh start|stop|status
set -euo pipefail
_svc_name=synapse
# shellcheck source=_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

S="$SERVICES_DIR/synapse"
VENV="$S/venv"
DATA="$S/data"
CONFIG="$DATA/homeserver.yaml"
SECRET_FILE="$S/registration_shared_secret"
TOKEN_FILE="$S/bot_token"
PIDFILE="$S/synapse.pid"
OUTFILE="$S/synapse.out"          # stdout/stderr of the process
HSLOG="$DATA/homeserver.log"       # Synapse's own log
PORT="${CHATBRIDGE_SYNAPSE_PORT:-8008}"
BASE_URL="http://127.0.0.1:$PORT"
SYNAPSE_VERSION="${CHATBRIDGE_SYNAPSE_VERSION:-1.163.2}"
PSYCOPG2_VERSION=2.9.13  # the binary wheel: no compiler or libpq headers needed
DATABASE="${CHATBRIDGE_SYNAPSE_DATABASE:-sqlite}"
# read by synapse_helper.py
export SYNAPSE_PORT="$PORT" SYNAPSE_DATABASE="$DATABASE" SYNAPSE_LOG_LEVEL="${CHATBRIDGE_SYNAPSE_LOG_LEVEL:-WARNING}"
export SYNAPSE_PG_HOST="${CHATBRIDGE_SYNAPSE_PG_HOST:-127.0.0.1}" SYNAPSE_PG_PORT="${CHATBRIDGE_SYNAPSE_PG_PORT:-5432}"
export SYNAPSE_PG_USER="${CHATBRIDGE_SYNAPSE_PG_USER:-chatbridge}"
export SYNAPSE_PG_PASSWORD="${CHATBRIDGE_SYNAPSE_PG_PASSWORD:-chatbridge}"
export SYNAPSE_PG_DATABASE="${CHATBRIDGE_SYNAPSE_PG_DATABASE:-synapse}"
[[ "$DATABASE" == postgres || "$DATABASE" == sqlite ]] \
    || die "CHATBRIDGE_SYNAPSE_DATABASE must be postgres or sqlite, not '$DATABASE'"
START_TIMEOUT="${CHATBRIDGE_SYNAPSE_START_TIMEOUT:-120}"
MARKER="synapse.app.homeserver"

running_pid() { pidfile_pid "$PIDFILE" "$MARKER"; }

answers() {
    python3 - "$BASE_URL/_matrix/client/versions" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

ensure_venv() {
    local stamp="$VENV/.chatbridge-synapse-version" want="$SYNAPSE_VERSION psycopg2-binary==$PSYCOPG2_VERSION"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    log "installing matrix-synapse==$SYNAPSE_VERSION and psycopg2-binary into $VENV (own venv, AGPL; first run only) ..."
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV" >"$S/pip.log" 2>&1 \
            || { cat "$S/pip.log" >&2; die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"; }
    fi
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" \
            "psycopg2-binary==$PSYCOPG2_VERSION" >>"$S/pip.log" 2>&1; then
        tail -n 30 "$S/pip.log" >&2
        die "pip install matrix-synapse failed (see $S/pip.log)"
    fi
    echo "$want" >"$stamp"
}

# ensure_database FRESH: Synapse's PostgreSQL database (FRESH=1: a new data dir gets a new, empty database).
ensure_database() {
    [[ "$DATABASE" == postgres ]] || return 0
    if [[ "$SYNAPSE_PG_HOST" == 127.0.0.1 ]] && ! port_open "$SYNAPSE_PG_PORT"; then
        # Synapse started alone (a test needing only it): the local PostgreSQL it keeps its data in comes first
        [[ "$SYNAPSE_PG_PORT" == 5432 ]] || die "no PostgreSQL on 127.0.0.1:$SYNAPSE_PG_PORT for Synapse's database"
        log "PostgreSQL is not running: starting it first (scripts/services/postgres.sh)"
        "$SCRIPT_DIR/postgres.sh" start || die "PostgreSQL, which holds Synapse's database, did not start"
    fi
    "$VENV/bin/python" "$SCRIPT_DIR/synapse_helper.py" ensure-database "$1" \
        || die "could not make Synapse's PostgreSQL database $SYNAPSE_PG_DATABASE"
    if [[ -f "$DATA/homeserver.db" ]]; then
        log "$DATA/homeserver.db (SQLite, $(du -sh "$DATA/homeserver.db" | cut -f1)) is no longer used; delete it to free the space"
    fi
}

ensure_config() {
    local fresh=0
    [[ -f "$CONFIG" ]] || fresh=1
    if [[ ! -s "$SECRET_FILE" ]]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$SECRET_FILE")
        log "created registration shared secret file $SECRET_FILE"
    fi
    chmod 600 "$SECRET_FILE"
    mkdir -p "$DATA"
    if [[ ! -f "$CONFIG" ]]; then
        log "generating config $CONFIG"
        if ! (cd "$DATA" && "$VENV/bin/python" -m synapse.app.homeserver --server-name localhost \
                --config-path "$CONFIG" --data-directory "$DATA" --generate-config --report-stats=no \
                >"$S/generate.log" 2>&1); then
            cat "$S/generate.log" >&2
            die "synapse --generate-config failed"
        fi
    fi
    ensure_database "$fresh"
    # Re-applied at every start (idempotent), so edits to synapse_helper.py take effect.
    "$VENV/bin/python" "$SCRIPT_DIR/synapse_helper.py" configure "$CONFIG" "$SECRET_FILE"
}

wait_ready() {
    local pid="$1" t0=$SECONDS
    while ! answers; do
        if ! child_running "$pid"; then
            echo "----- last 40 lines of $OUTFILE / $HSLOG -----" >&2
            tail -n 20 "$OUTFILE" >&2 || true
            tail -n 20 "$HSLOG" >&2 || true
            rm -f "$PIDFILE"
            die "synapse process $pid exited during startup"
        fi
        if (( SECONDS - t0 >= START_TIMEOUT )); then
            tail -n 40 "$HSLOG" >&2 || true
            stop_pid "$pid" "$MARKER" 30
            rm -f "$PIDFILE"
            die "synapse not answering on $BASE_URL after ${START_TIMEOUT}s"
        fi
        sleep 0.3
    done
}

bootstrap_bot() {
    "$VENV/bin/python" "$SCRIPT_DIR/synapse_helper.py" bootstrap-bot "$BASE_URL" "$S" \
        || die "could not set up the bot user"
}

do_start() {
    local pid owner
    mkdir -p "$S"
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        if answers; then
            if [[ -s "$TOKEN_FILE" ]]; then
                log "already running (pid $pid) on $BASE_URL; bot token file $TOKEN_FILE"
                return 0
            fi
        else
            log "pid $pid is starting; waiting for it"
            wait_ready "$pid"
        fi
        bootstrap_bot
        log "ready on $BASE_URL (pid $pid)"
        return 0
    fi
    if port_open "$PORT"; then
        owner="$(port_owner "$PORT")"
        die "127.0.0.1:$PORT is already in use${owner:+ by $owner}, not by this script's Synapse; stop that first"
    fi

    ensure_venv
    ensure_config

    rotate_log "$OUTFILE"
    log "starting Synapse $SYNAPSE_VERSION (logs: $HSLOG, $OUTFILE)"
    (cd "$DATA" && exec nohup "$VENV/bin/python" -m synapse.app.homeserver -c "$CONFIG" \
        >>"$OUTFILE" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$PIDFILE"
    wait_ready "$pid"
    bootstrap_bot
    log "ready on $BASE_URL (pid $pid); shared secret file $SECRET_FILE"
}

kill_synapse() { stop_pid "$1" "$MARKER" 30; }

do_stop() { svc_stop running_pid kill_synapse "$PIDFILE"; }

do_status() {
    svc_status running_pid answers " on $BASE_URL; bot token file $TOKEN_FILE" \
        "$BASE_URL not answering" "$HSLOG"
}

svc_main "$@"
