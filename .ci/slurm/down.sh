#!/usr/bin/env bash
# Stop the daemons started by .ci/slurm/up.sh, by their pid files only.
set -uo pipefail

SLURM_DIR=${LORABENCH_SLURM_DIR:-/tmp/lorabench-slurm}

stop_by_pidfile() {
    local pidfile=$1 pid
    [[ -s "$pidfile" ]] || return 0
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    for _ in $(seq 20); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$pidfile"
}

# Cancel what is still queued or running first (a killed test run leaves its jobs behind), while the
# daemons that can cancel them are still up; otherwise their steps outlive slurmd as orphans.
if [[ -s "$SLURM_DIR/slurmctld.pid" ]] && command -v scancel >/dev/null; then
    timeout 20 scancel --user "$(id -un)" 2>/dev/null && sleep 2
fi

for daemon in slurmd slurmctld munged; do
    stop_by_pidfile "$SLURM_DIR/$daemon.pid"
done
