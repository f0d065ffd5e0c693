#!/usr/bin/env bash
# Stop the one-node CI cluster of .ci/slurm-up.sh: cancel its jobs, then stop slurmd, slurmctld
# and munged by the PIDs in their pid files. Already stopped (or never started) is fine.
set -uo pipefail

RUN_DIR=/run/slurm
PIDS_FILE=/tmp/detnas-slurm.pids

log() { echo "slurm-down: $*"; }

# stop <name> <pidfile>: TERM the pid if it is <name>, wait up to 15 s, then KILL
stop() {
    local name=$1 pidfile=$2 pid=""
    [ -s "$pidfile" ] && pid=$(cat "$pidfile")
    if [ -z "$pid" ] && [ -s "$PIDS_FILE" ]; then
        pid=$(awk -v n="$name" '$1 == n {print $2}' "$PIDS_FILE")
    fi
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null || [ "$(cat /proc/"$pid"/comm 2>/dev/null)" != "$name" ]; then
        log "$name not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 75); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; rm -f "$pidfile"; return 0; }
        sleep 0.2
    done
    log "$name ($pid) still running after 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

# jobs first, while slurmctld and slurmd are there to end them
if command -v squeue >/dev/null 2>&1 && squeue -h >/dev/null 2>&1; then
    jobs=$(squeue -h -o %i -t PENDING,RUNNING,CONFIGURING,SUSPENDED 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -o %i -t RUNNING,COMPLETING 2>/dev/null)" ] && break
            sleep 1
        done
    fi
fi

stop slurmd "$RUN_DIR/slurmd.pid"
stop slurmctld "$RUN_DIR/slurmctld.pid"
stop munged /run/munge/munged.pid
rm -f "$PIDS_FILE"
exit 0
