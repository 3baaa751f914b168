# Shared helpers for the chatbridge service scripts. Sourced, not executed.
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the sourcing scripts
SERVICES_DIR="${CHATBRIDGE_SERVICES_DIR:-$HOME/.cache/chatbridge-services}"
# shellcheck disable=SC2034
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_svc_name="${_svc_name:-service}"

log()  { printf '[%s] %s\n' "$_svc_name" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$_svc_name" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$_svc_name" "$*" >&2; exit 1; }

# port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# pid_alive PID MARKER -> 0 when PID runs and its command line contains MARKER
pid_alive() {
    local pid="$1" marker="$2"
    [[ -n "$pid" && "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"
}

# child_running PID -> 0 while a process this script just started runs (not exited, not a zombie). Unlike
# pid_alive it asks no marker: between fork and exec the child's command line is still this script's.
child_running() {
    local pid="$1" stat
    [[ -n "$pid" && "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ -n "$stat" && "${stat:0:1}" != "Z" ]]
}

# read_pid FILE -> prints the pid stored in FILE (first line), or nothing
read_pid() {
    if [[ -f "$1" ]]; then head -n1 "$1" 2>/dev/null || true; fi
}

# port_owner PORT -> prints "pid/command" of the listener on PORT if ss can tell
port_owner() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*",pid=[0-9]*\).*/\1/p' | head -n1
}

# stop_pid PID MARKER WAIT_SECONDS: SIGTERM, wait, then SIGKILL
stop_pid() {
    local pid="$1" marker="$2" wait_s="$3" i
    pid_alive "$pid" "$marker" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 5; i++)); do
        pid_alive "$pid" "$marker" || return 0
        sleep 0.2
    done
    warn "pid $pid did not exit after ${wait_s}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" "$marker" || return 0
        sleep 0.2
    done
    die "pid $pid is still alive after SIGKILL"
}

# rotate_log FILE: keep the previous run's log as FILE.1
rotate_log() {
    if [[ -f "$1" ]]; then mv -f "$1" "$1.1"; fi
    : >"$1"
}

usage_exit() {
    echo "usage: $0 start|stop|status|restart" >&2
    exit 2
}

# ---- shared start|stop|status plumbing ------------------------------------------------------
# A service script defines do_start, do_stop and do_status (the last two usually just call
# svc_stop / svc_status with its own hooks) and ends with: svc_main "$@"

# pidfile_pid FILE MARKER -> prints the pid stored in FILE if that process runs and matches MARKER
pidfile_pid() {
    local pid
    pid="$(read_pid "$1")"
    if pid_alive "$pid" "$2"; then echo "$pid"; fi
}

# svc_stop PID_FN KILL_FN [PIDFILE]
#   PID_FN prints the running pid (or nothing); KILL_FN PID stops that process;
#   PIDFILE, when given, is removed whether or not something was running.
svc_stop() {
    local pid_fn="$1" kill_fn="$2" pidfile="${3:-}" pid
    pid="$("$pid_fn")"
    if [[ -z "$pid" ]]; then
        log "not running"
        if [[ -n "$pidfile" ]]; then rm -f "$pidfile"; fi
        return 0
    fi
    log "stopping pid $pid ..."
    "$kill_fn" "$pid"
    if [[ -n "$pidfile" ]]; then rm -f "$pidfile"; fi
    log "stopped"
}

# svc_status PID_FN READY_FN RUNNING_INFO NOT_READY_INFO LOGFILE [STOPPED_FN]
#   exit status 0: running and READY_FN succeeds; 1: running but not ready; 3: stopped.
#   Messages: "running (pid N)RUNNING_INFO; log LOGFILE",
#             "starting or unhealthy (pid N, NOT_READY_INFO); log LOGFILE",
#             "stopped" (or whatever STOPPED_FN logs instead).
svc_status() {
    local pid_fn="$1" ready_fn="$2" running_info="$3" not_ready_info="$4" logfile="$5"
    local stopped_fn="${6:-}" pid
    pid="$("$pid_fn")"
    if [[ -n "$pid" ]] && "$ready_fn"; then
        log "running (pid $pid)$running_info; log $logfile"
        return 0
    elif [[ -n "$pid" ]]; then
        log "starting or unhealthy (pid $pid, $not_ready_info); log $logfile"
        return 1
    fi
    if [[ -n "$stopped_fn" ]]; then "$stopped_fn"; else log "stopped"; fi
    return 3
}

# svc_main ACTION -> runs do_start / do_stop / do_status / do_restart (default: stop, start), or prints usage and exits 2
svc_main() {
    # One start/stop at a time per service: a test session and `make services` starting the same broker at once
    # would otherwise race for its port and data directory.
    # (`flock -o`: the server this start launches must not inherit the lock, or it would hold it while it runs.)
    if [[ "${1:-}" != status && -z "${_SVC_LOCKED:-}" ]] && command -v flock >/dev/null; then
        mkdir -p "$SERVICES_DIR"
        _SVC_LOCKED=1 exec flock -o "$SERVICES_DIR/.${_svc_name}.lock" "$0" "$@"
    fi
    unset _SVC_LOCKED
    case "${1:-}" in
        start) do_start ;;
        stop) do_stop ;;
        status) do_status ;;
        restart)
            if declare -F do_restart >/dev/null; then do_restart; else do_stop; do_start; fi ;;
        *) usage_exit ;;
    esac
}
