#!/usr/bin/env bash
# Stop exactly the daemons tests/cluster/start_slurm.sh started (PIDs recorded in $DIR/pids).
set -uo pipefail

DIR="${RMI_SLURM_DIR:-/tmp/rmi-slurm}"
[ -f "$DIR/pids" ] || exit 0
while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" && echo "stopped $name ($pid)"
    fi
done <"$DIR/pids"
for _ in $(seq 1 20); do
    alive=0
    while read -r _ pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$DIR/pids"
    [ "$alive" = 0 ] && break
    sleep 0.5
done
rm -f "$DIR/pids"
