#!/usr/bin/env bash
# A one-machine SLURM cluster on 127.0.0.1, to run launch/slurm/*.sbatch for real (the tests in
# tests/launch/test_slurm.py use it). Needs Debian's slurmctld, slurmd, slurm-client and munge packages
# (the install action gets them with apt-get, as root or through sudo); everything else it writes stays in DIR:
#   bash launch/slurm/local_cluster.sh install
#   bash launch/slurm/local_cluster.sh start DIR    # then: export SLURM_CONF=DIR/slurm.conf; sbatch ...
#   bash launch/slurm/local_cluster.sh stop DIR
# One node, localhost, with all of the machine's CPUs and one partition; munge with its own key and socket;
# no cgroups (processes are tracked by their parent ids), so it also runs in a container; job credentials expire
# after 10 s instead of 120, so a requeued job starts again 10 s after it stopped. Run it as the user who
# submits the jobs (root included): the daemons run as that user.
set -euo pipefail
ACTION="${1:?usage: bash launch/slurm/local_cluster.sh install | start DIR | stop DIR}"
PACKAGES="slurmctld slurmd slurm-client munge"
if [ "$ACTION" = install ]; then
    command -v slurmctld > /dev/null && command -v munged > /dev/null && exit 0
    # shellcheck disable=SC2086
    exec bash "$(dirname "$0")/../apt_install.sh" $PACKAGES
fi
DIR="$(mkdir -p "${2:?usage: bash launch/slurm/local_cluster.sh start|stop DIR}" && cd "$2" && pwd)"
PORT="${SLURM_LOCAL_PORT:-16817}"

stop() {
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
        if [ -s "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

if [ "$ACTION" = stop ]; then
    stop
    exit 0
fi
[ "$ACTION" = start ] || { echo "error: unknown action '$ACTION' (start or stop)" >&2; exit 2; }
for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" > /dev/null || {
        echo "error: $tool not found: bash launch/slurm/local_cluster.sh install (Debian's $PACKAGES)" >&2; exit 2; }
done
stop
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
chmod 700 "$DIR/munge"
[ -s "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munged.seed"
MEMORY_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
cat > "$DIR/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
        echo "SLURM running on 127.0.0.1:$PORT (one node, $(nproc) CPUs): export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "error: the node did not come up within 30 s; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
exit 1
