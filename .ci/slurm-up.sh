#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine (CI; Debian, as root): munged, slurmctld and
# slurmd as plain daemons (no systemd), no accounting database (squeue answers the job states).
# Idempotent: installs only what is missing and leaves running daemons alone.
# Stop it with .ci/slurm-down.sh.
#
#   SLURM_UP_TIMEOUT  seconds to wait for the node to become idle (default 60)
set -euo pipefail

CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
PIDS_FILE=/tmp/detnas-slurm.pids     # "name pid" lines, read by slurm-down.sh
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
log() { echo "slurm-up: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts daemons)"

# -- packages ------------------------------------------------------------------------------------
need=()
for cmd in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
fi
for cmd in slurmctld slurmd sbatch squeue sinfo scontrol munged; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found after installing the packages"
done

# -- munge ---------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# -- slurm.conf ----------------------------------------------------------------------------------
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
real_mb=$(( mem_mb - mem_mb / 20 ))          # a bit below MemTotal, or slurmd drains the node
install -d -m 0755 "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
conf=$(cat <<EOF
# Written by detnas .ci/slurm-up.sh: a one-node CI cluster, no accounting.
ClusterName=detnas-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
InactiveLimit=0
Waittime=0
# squeue (the status command without accounting) sees finished jobs for MinJobAge seconds;
# snakemake-executor-plugin-slurm wants at least 3x its first status-check delay (120 s).
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${RUN_DIR}/slurmctld.pid
SlurmdPidFile=${RUN_DIR}/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -f "$CONF_DIR/slurm.conf" ] || [ "$(cat "$CONF_DIR/slurm.conf")" != "$conf" ]; then
    printf '%s\n' "$conf" > "$CONF_DIR/slurm.conf"
    changed=1
    log "wrote $CONF_DIR/slurm.conf (node $host: $cpus CPUs, ${real_mb} MB)"
fi

# -- daemons -------------------------------------------------------------------------------------
alive() {  # alive <pidfile> <name>: the pid in the file runs a process called <name>
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

wait_pidfile() {  # wait_pidfile <pidfile> <name> <log>
    for _ in $(seq 1 50); do
        alive "$1" "$2" && return 0
        sleep 0.2
    done
    echo "---- $3 (last lines)" >&2
    tail -n 20 "$3" >&2 2>/dev/null || true
    die "$2 did not start (no live pid in $1)"
}

if ! alive /run/munge/munged.pid munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
        || { tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true; die "munged failed to start"; }
    wait_pidfile /run/munge/munged.pid munged /var/log/munge/munged.log
fi
munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed)"

if alive "$RUN_DIR/slurmctld.pid" slurmctld; then
    [ "$changed" -eq 0 ] || { log "reconfiguring slurmctld"; scontrol reconfigure || true; }
else
    log "starting slurmctld"
    /usr/sbin/slurmctld || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
    wait_pidfile "$RUN_DIR/slurmctld.pid" slurmctld "$LOG_DIR/slurmctld.log"
fi

if ! alive "$RUN_DIR/slurmd.pid" slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
    wait_pidfile "$RUN_DIR/slurmd.pid" slurmd "$LOG_DIR/slurmd.log"
fi

{
    echo "munged $(cat /run/munge/munged.pid)"
    echo "slurmctld $(cat "$RUN_DIR/slurmctld.pid")"
    echo "slurmd $(cat "$RUN_DIR/slurmd.pid")"
} > "$PIDS_FILE"

# -- wait for the node ---------------------------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
state=""
while :; do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mixed|allocated) break ;;
        drain*|down*|fail*)
            # left over from an earlier run (e.g. a killed slurmd): put it back in service
            scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        sinfo -N -l >&2 || true
        echo "---- $LOG_DIR/slurmctld.log" >&2; tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
        echo "---- $LOG_DIR/slurmd.log" >&2; tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
        die "node $host not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
    fi
    sleep 1
done
log "cluster up (node $host: $state); daemons: $(tr '\n' ' ' < "$PIDS_FILE")"
sinfo
