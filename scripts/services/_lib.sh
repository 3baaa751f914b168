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
    echo "usage: $0 start|stop|status" >&2
    exit 2
}
