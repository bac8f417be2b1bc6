#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (slurmctld + slurmd on this host, munge auth),
# for the real Slurm tests (`nox -s slurm`). Needs root (it writes /etc/slurm and starts the
# daemons) and Debian/Ubuntu packages slurm-wlm and munge (installed with apt-get if missing).
#
#   bash scripts/slurm_local.sh start    # install if missing, configure, start, wait until idle
#   bash scripts/slurm_local.sh status   # daemons, sinfo, squeue
#   bash scripts/slurm_local.sh stop     # stop the daemons this script started
#
# Environment: QVIT_SLURM_STATE (default /var/tmp/qvit-slurm): state, spool and logs;
# QVIT_SLURM_CONF (default /etc/slurm/slurm.conf): where slurm.conf goes (sbatch, squeue and
# friends read /etc/slurm/slurm.conf unless SLURM_CONF says otherwise). An existing slurm.conf
# that this script did not write is left alone (start refuses).
#
# No cgroups: process tracking by /proc (proctrack/linuxproc), no task affinity or memory
# enforcement (task/none), so it runs in containers without a writable cgroup tree. GPUs
# (nvidia-smi -L) are declared as gres "gpu" when present.
set -euo pipefail

STATE=${QVIT_SLURM_STATE:-/var/tmp/qvit-slurm}
CONF=${QVIT_SLURM_CONF:-/etc/slurm/slurm.conf}
CONF_DIR=$(dirname "$CONF")
MARK="# written by qvit scripts/slurm_local.sh"
HOST=$(hostname -s)
PARTITION=${QVIT_SLURM_PARTITION:-debug}

log() { echo "[slurm_local] $*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "needs root (writes $CONF, starts munged/slurmctld/slurmd); run with sudo"
        exit 1
    fi
}

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    if ! command -v apt-get >/dev/null; then
        log "slurmctld/slurmd/munged missing and no apt-get here: install Slurm and munge"
        exit 1
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script; refusing to overwrite it"
        log "(move it away, or set QVIT_SLURM_CONF and SLURM_CONF to another path)"
        exit 1
    fi
    mkdir -p "$CONF_DIR" "$STATE"/{ctld,spool,log}
    local cpus mem gres="" gres_line="" ngpu=0
    cpus=$(nproc --all)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        ngpu=$(nvidia-smi -L | grep -c '^GPU' || true)
    fi
    if [ "$ngpu" -gt 0 ]; then
        gres="Gres=gpu:$ngpu"
        gres_line="GresTypes=gpu"
        {
            echo "$MARK"
            echo "AutoDetect=off"
            for ((i = 0; i < ngpu; i++)); do echo "NodeName=$HOST Name=gpu File=/dev/nvidia$i"; done
        } >"$CONF_DIR/gres.conf"
    fi
    cat >"$CONF" <<EOF
$MARK
ClusterName=qvit-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
MaxArraySize=10001
$gres_line
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    # Read only by the cgroup plugins, which this configuration does not load; kept so that a
    # switch to proctrack/cgroup has a sane starting point.
    cat >"$CONF_DIR/cgroup.conf" <<EOF
$MARK
CgroupAutomount=yes
ConstrainCores=no
ConstrainRAMSpace=no
EOF
    log "wrote $CONF ($HOST: $cpus CPUs, ${mem} MB, $ngpu GPUs; partition $PARTITION)"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --force
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    log "starting munged"
    runuser -u munge -- munged
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.5
    done
    log "munged did not come up"
    exit 1
}

start() {
    need_root
    install_if_missing
    write_conf
    start_munge
    export SLURM_CONF=$CONF
    if pid_alive "$STATE/slurmctld.pid"; then
        log "slurmctld already running (pid $(cat "$STATE/slurmctld.pid"))"
    else
        log "starting slurmctld"
        slurmctld -c -f "$CONF"  # -c: clean start, no stale jobs from an earlier cluster
    fi
    if pid_alive "$STATE/slurmd.pid"; then
        log "slurmd already running (pid $(cat "$STATE/slurmd.pid"))"
    else
        log "starting slurmd"
        slurmd -f "$CONF"
    fi
    for _ in $(seq 60); do
        state=$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1 || true)
        case "$state" in
        idle* | mixed* | allocated*)
            log "node $HOST is $state"
            sinfo
            return 0
            ;;
        down* | drain*)
            scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
            ;;
        esac
        sleep 1
    done
    log "node $HOST did not become idle (last state: ${state:-none}); logs in $STATE/log"
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    exit 1
}

stop_pidfile() {
    local name=$1 file=$2
    if pid_alive "$file"; then
        local pid
        pid=$(cat "$file")
        log "stopping $name (pid $pid)"
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

stop() {
    need_root
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    if [ -f /run/munge/munged.pid ]; then
        stop_pidfile munged /run/munge/munged.pid
    fi
}

status() {
    export SLURM_CONF=$CONF
    for d in slurmctld slurmd; do
        if pid_alive "$STATE/$d.pid"; then echo "$d: running (pid $(cat "$STATE/$d.pid"))"
        else echo "$d: not running"; fi
    done
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running"
    else echo "munged: not running"; fi
    sinfo 2>&1 || true
    squeue 2>&1 || true
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
