#!/usr/bin/env bash
# Stop exactly the daemons tests/cluster/start_slurm.sh started (PIDs recorded in $DIR/pids), and
# remove its /etc/slurm links: a slurm.conf naming a stopped controller makes `scontrol show config`
# wait 9 s for it, and the SLURM executor plugin runs that command whenever snakemake starts.
set -uo pipefail

DIR="${RMI_SLURM_DIR:-/tmp/rmi-slurm}"
if [ -f "$DIR/pids" ]; then
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
fi
for conf in slurm.conf gres.conf; do
    if [ "$(readlink "/etc/slurm/$conf")" = "$DIR/$conf" ]; then
        rm -f "/etc/slurm/$conf"
    fi
done
exit 0
