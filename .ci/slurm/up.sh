#!/usr/bin/env bash
# Start a throwaway single-node SLURM cluster (munged + slurmctld + slurmd) for CI.
#
# Why this shape: CI machines have no systemd, no cgroups and no accounting database,
# so the daemons run as root from a private state directory with the linuxproc/none
# plugins, and N fake GPUs (character devices aliasing /dev/null) let `--gpus=1` jobs
# schedule exactly as on a real GPU node. Nothing here survives the CI session:
# .ci/slurm/down.sh stops every daemon by its pid file.
#
# Environment: LORABENCH_SLURM_DIR (state dir, default /tmp/lorabench-slurm),
#              LORABENCH_SLURM_GPUS (fake GPUs on the node, default 2).
set -euo pipefail

SLURM_DIR=${LORABENCH_SLURM_DIR:-/tmp/lorabench-slurm}
FAKE_GPUS=${LORABENCH_SLURM_GPUS:-2}
NODE=$(hostname -s)
CONF_DIR=/etc/slurm  # where sinfo/sbatch/slurmd look without SLURM_CONF

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null && return
    local pkgs=(slurmctld slurmd slurm-client munge)
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
}

make_fake_gpus() {
    local i
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -e "$SLURM_DIR/dev/gpu$i" ]] || mknod "$SLURM_DIR/dev/gpu$i" c 1 3
    done
}

write_gres_conf() {
    local i
    {
        echo "AutoDetect=off"
        for ((i = 0; i < FAKE_GPUS; i++)); do
            echo "NodeName=$NODE Name=gpu File=$SLURM_DIR/dev/gpu$i"
        done
    } >"$CONF_DIR/gres.conf"
}

write_slurm_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat >"$CONF_DIR/slurm.conf" <<CONF
ClusterName=lorabench-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SLURM_DIR/munge.socket
CredType=cred/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
# squeue answers status queries only while finished jobs are kept: >= 3x the
# profile's slurm-init-seconds-before-status-checks, else the plugin falls back to sacct.
MinJobAge=600
ReturnToService=2
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

start_daemons() {
    mungekey --create --keyfile="$SLURM_DIR/munge.key" --force 2>/dev/null \
        || dd if=/dev/urandom of="$SLURM_DIR/munge.key" bs=1024 count=1 status=none
    chmod 400 "$SLURM_DIR/munge.key"
    munged --force --key-file="$SLURM_DIR/munge.key" --socket="$SLURM_DIR/munge.socket" \
        --pid-file="$SLURM_DIR/munged.pid" --log-file="$SLURM_DIR/munged.log" \
        --seed-file="$SLURM_DIR/munged.seed"
    slurmctld -i
    slurmd -N "$NODE"
}

wait_until_idle() {
    local state
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        [[ "$state" == idle* ]] && return 0
        sleep 1
    done
    echo "SLURM node $NODE did not become idle (state: '${state:-none}')" >&2
    tail -n 20 "$SLURM_DIR"/slurm*.log >&2 || true
    return 1
}

"$(dirname "$0")/down.sh"
install_packages
rm -rf "$SLURM_DIR"
mkdir -p "$SLURM_DIR"/{state,spool,dev} "$CONF_DIR"
make_fake_gpus
write_gres_conf
write_slurm_conf
start_daemons
wait_until_idle
echo "SLURM up: node $NODE, $(nproc) CPUs, $FAKE_GPUS fake GPUs, state in $SLURM_DIR"
