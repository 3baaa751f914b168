#!/usr/bin/env bash
# Start/stop/status of every chatbridge test service: postgres, kafka, synapse (stop runs in reverse).
# usage: all.sh start|stop|status
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES=(postgres kafka synapse)  # Synapse keeps its data in PostgreSQL: started after it, stopped before it

case "${1:-}" in
    start)
        for s in "${SERVICES[@]}"; do
            "$DIR/$s.sh" start
        done
        ;;
    stop)
        rc=0
        for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
            "$DIR/${SERVICES[i]}.sh" stop || rc=1
        done
        exit "$rc"
        ;;
    status)
        rc=0
        for s in "${SERVICES[@]}"; do
            "$DIR/$s.sh" status || rc=3
        done
        exit "$rc"
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
