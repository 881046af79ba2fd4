#!/usr/bin/env bash
# Start a real single-node SLURM (munged, slurmctld, slurmd) on this host, for tests and CI.
#
#   tests/cluster/start_slurm.sh        # installs Debian's slurm-wlm + munge if missing
#   tests/cluster/stop_slurm.sh         # stops exactly the daemons started here
#
# State, logs, config and PIDs live in $RMI_SLURM_DIR (default /tmp/rmi-slurm). The node is this
# host with all its CPUs and memory, one `debug` partition, and 4 fake `gpu` GRES (empty files as devices)
# so that `sbatch --gpus=1` / `--gres=gpu:1` are accepted and scheduled. No accounting database:
# job status comes from `squeue` (MinJobAge=600 keeps finished jobs visible long enough), which is
# the SLURM executor plugin's documented fallback (`--slurm-status-command squeue`).
# Needs root (slurmd runs as root, as on any cluster). Prints how long SLURM took to come up.
set -euo pipefail

DIR="${RMI_SLURM_DIR:-/tmp/rmi-slurm}"
START=$(date +%s.%N)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi

if [ -f "$DIR/pids" ]; then
    "$(dirname "$0")/stop_slurm.sh"
fi
rm -rf "$DIR/spool"  # no state from an earlier run (a drained node, old jobs)
mkdir -p "$DIR"/{spool/ctld,spool/d,log}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))

cat >"$DIR/slurm.conf" <<EOF
ClusterName=rmi-test
SlurmctldHost=$HOST
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# fake GPU device files: slurmd only needs them to exist (task/none: nothing is constrained)
mkdir -p "$DIR/dev"
touch "$DIR"/dev/gpu{0,1,2,3}
cat >"$DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=$DIR/dev/gpu[0-3]
EOF
# Debian's tools read /etc/slurm/slurm.conf unless SLURM_CONF says otherwise; set both so that
# snakemake (which inherits SLURM_CONF from the caller) and plain `sinfo` find this cluster.
mkdir -p /etc/slurm
ln -sf "$DIR/slurm.conf" /etc/slurm/slurm.conf
ln -sf "$DIR/gres.conf" /etc/slurm/gres.conf

# munge: a fresh key, run as root with its own socket/state under $DIR
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
: >"$DIR/pids"
record() { # wait for a daemon's pid file, then record it for stop_slurm.sh
    for _ in $(seq 1 40); do
        [ -s "$DIR/$1.pid" ] && break
        sleep 0.25
    done
    echo "$1 $(cat "$DIR/$1.pid")" >>"$DIR/pids"
}
rm -f "$DIR"/*.pid
munged --force --num-threads=2 --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log"
record munged
slurmctld -f "$DIR/slurm.conf" -i
record slurmctld
slurmd -f "$DIR/slurm.conf"
record slurmd

for _ in $(seq 1 120); do
    if sinfo -h -N -o "%t" 2>/dev/null | grep -qx "idle"; then
        END=$(date +%s.%N)
        printf 'SLURM is up on %s (%s CPUs, gpu:4 fake GRES) after %.1f s\n' "$HOST" "$CPUS" "$(echo "$END - $START" | bc)"
        exit 0
    fi
    sleep 0.5
done
echo "error: SLURM did not come up within 60 s; logs:" >&2
tail -n 30 "$DIR"/log/*.log >&2
exit 1
