#!/usr/bin/env bash
# Apache Kafka 4.1.1, single KRaft node (broker+controller) on 127.0.0.1:9092 (controller 127.0.0.1:9093).
# Jars come from Maven Central (kafka/pom.xml); state lives in $CHATBRIDGE_SERVICES_DIR/kafka.
# usage: kafka.sh start|stop|status|restart
# `start` wipes the log dir (tests get an empty broker); `restart` keeps it (a broker outage, topics survive).
set -euo pipefail
_svc_name=kafka
# shellcheck source=_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

K="$SERVICES_DIR/kafka"
LIBS="$K/libs"
DATA="$K/data"
PIDFILE="$K/kafka.pid"
LOGFILE="$K/kafka.log"
PROPS="$K/server.properties"
SRC="$SCRIPT_DIR/kafka"
PORT=9092
CONTROLLER_PORT=9093
MARKER="kafka.Kafka"
START_TIMEOUT="${CHATBRIDGE_KAFKA_START_TIMEOUT:-180}"

JOPTS=(-Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
       -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
       "-Dlog4j2.configurationFile=$SRC/log4j2.properties")

running_pid() { pidfile_pid "$PIDFILE" "$MARKER"; }

ready() {
    port_open "$PORT" && grep -q "Kafka Server started" "$LOGFILE" 2>/dev/null
}

install_jars() {
    local want have=""
    want="$(sha256sum "$SRC/pom.xml" | cut -d' ' -f1)"
    [[ -f "$LIBS/.pom.sha256" ]] && have="$(cat "$LIBS/.pom.sha256")"
    [[ "$want" == "$have" ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
    command -v java >/dev/null || die "java not found (apt-get install -y openjdk-17-jdk-headless)"
    log "copying broker jars from Maven Central into $LIBS (first run only) ..."
    rm -rf "$LIBS.tmp"
    mkdir -p "$LIBS.tmp"
    if ! mvn -q -B -f "$SRC/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
            "-DoutputDirectory=$LIBS.tmp" >"$K/mvn.log" 2>&1; then
        tail -n 30 "$K/mvn.log" >&2
        die "maven failed (full output in $K/mvn.log)"
    fi
    echo "$want" >"$LIBS.tmp/.pom.sha256"
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    log "$(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

new_cluster_id() {
    # Same format as `kafka-storage.sh random-uuid`: url-safe base64 of 16 random bytes, no padding,
    # never starting with '-'.
    python3 - <<'PY'
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break
PY
}

wait_ready() {
    local pid="$1" t0=$SECONDS
    while ! ready; do
        if ! child_running "$pid"; then
            echo "----- last 40 lines of $LOGFILE -----" >&2
            tail -n 40 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "broker process $pid exited during startup"
        fi
        if (( SECONDS - t0 >= START_TIMEOUT )); then
            echo "----- last 40 lines of $LOGFILE -----" >&2
            tail -n 40 "$LOGFILE" >&2 || true
            log "stopping the broker that did not become ready"
            stop_pid "$pid" "$MARKER" 30
            rm -f "$PIDFILE"
            die "broker not ready after ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

do_start() {
    local keep_data="${1:-}" pid owner cid
    mkdir -p "$K"
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        if ready; then
            log "already running (pid $pid) on 127.0.0.1:$PORT"
            return 0
        fi
        log "pid $pid is starting; waiting for it"
        wait_ready "$pid"
        log "ready on 127.0.0.1:$PORT (pid $pid)"
        return 0
    fi
    for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_open "$p"; then
            owner="$(port_owner "$p")"
            die "127.0.0.1:$p is already in use${owner:+ by $owner}, not by this script's broker; stop that first"
        fi
    done

    install_jars

    rotate_log "$LOGFILE"
    if [[ -n "$keep_data" && -f "$DATA/meta.properties" ]]; then
        log "keeping the log dir $DATA"
    else
        # Fresh, formatted log dir at every start: tests get an empty broker.
        rm -rf "$DATA"
        mkdir -p "$DATA"
        { cat "$SRC/server.properties"; echo; echo "log.dirs=$DATA"; } >"$PROPS"
        cid="$(new_cluster_id)"
        log "formatting $DATA (cluster id $cid)"
        if ! java "${JOPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
            -t "$cid" -c "$PROPS" >>"$LOGFILE" 2>&1; then
            tail -n 30 "$LOGFILE" >&2
            die "kafka storage format failed (see $LOGFILE)"
        fi
    fi

    log "starting broker (log: $LOGFILE)"
    nohup java "${JOPTS[@]}" -cp "$LIBS/*" kafka.Kafka "$PROPS" >>"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
    wait_ready "$pid"
    log "ready on 127.0.0.1:$PORT (pid $pid, controller 127.0.0.1:$CONTROLLER_PORT)"
}

kill_broker() { stop_pid "$1" "$MARKER" 60; }

do_stop() { svc_stop running_pid kill_broker "$PIDFILE"; }

do_restart() { do_stop; do_start keep-data; }

do_status() {
    svc_status running_pid ready " bootstrap 127.0.0.1:$PORT" "port $PORT not ready" "$LOGFILE"
}

svc_main "$@"
