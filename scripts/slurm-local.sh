#!/usr/bin/env bash
# A real two-node Slurm on loopback for nbdist's tests: munge + slurmctld + one slurmd per node (n1, n2), each
# node with two GPUs (GRES backed by plain files: allocation is real, devices are not), all state in one folder.
#
#   scripts/slurm-local.sh start          install (root + apt) if missing, start the daemons, wait for idle nodes
#   scripts/slurm-local.sh env            print the `export SLURM_CONF=...` lines clients need (eval them)
#   scripts/slurm-local.sh status         print the node states; exit 0 only when the cluster answers
#   scripts/slurm-local.sh restart-ctld   stop and start slurmctld alone (tests: the controller restarts mid-array)
#   scripts/slurm-local.sh kill-node N    SIGKILL node N's slurmd and its job steps (tests: a node dies mid-array)
#   scripts/slurm-local.sh start-node N   start node N's slurmd again and return it to service
#   scripts/slurm-local.sh stop           cancel every job, shut the daemons down, leave no process behind
#
# State lives in ${NBDIST_SLURM_DIR:-/tmp/nbdist-slurm}. `start` is idempotent. Facts behind the choices:
# ../shared/notes/slurm-single-node.md and slurm-multi-node.md (Slurm 22.05 on Debian 12, no systemd, no cgroups,
# no slurmdbd). NBDIST_SLURM_MAX_ARRAY_SIZE sets MaxArraySize (a site's limit; Slurm's default 1001).
set -euo pipefail

B="${NBDIST_SLURM_DIR:-/tmp/nbdist-slurm}"
CONF="$B/slurm.conf"
# Advertised CPUs per node: more than the machine has, so a 20-step array runs at once and the tests stay fast.
CPUS="${NBDIST_SLURM_CPUS:-8}"
NODES=(n1 n2)
GPUS_PER_NODE=2
MAX_ARRAY_SIZE="${NBDIST_SLURM_MAX_ARRAY_SIZE:-1001}"
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm-local: $*" >&2; exit 1; }
log() { echo "slurm-local: $*" >&2; }

# The pid in a pid file, only if that process runs and is the expected program (pids get reused).
pid_of() {
    local file="$1" comm="$2" pid
    [ -r "$file" ] || return 1
    pid="$(tr -dc 0-9 2>/dev/null <"$file")"
    # A zombie has exited already (its parent, here init, has not reaped it yet).
    [ -n "$pid" ] && alive_as "$pid" "$comm" || return 1
    echo "$pid"
}

# Wait up to $2 tenths of a second for the program of pid file $1 (comm $3) to be gone.
wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        pid_of "$1" "$3" >/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# SIGTERM, then SIGKILL, the program named by a pid file; only ever our own pids.
kill_pidfile() {
    local file="$1" comm="$2" pid
    pid="$(pid_of "$file" "$comm")" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$file" 50 "$comm" || { log "$comm ($pid) ignored SIGTERM; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
    wait_gone "$file" 20 "$comm" || die "$comm ($pid) is still running"
}

# True if pid $1 runs (not a zombie) as program $2. Builtins only: this runs in loops over /proc.
alive_as() {
    local comm="" stat=""
    read -r comm 2>/dev/null <"/proc/$1/comm" || return 1
    [ "$comm" = "$2" ] || return 1
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Processes named $1 that belong to THIS cluster: their environment holds our SLURM_CONF. slurmd and the
# slurmstepd it forks remove their pid files before they are gone, so a pid file alone is not enough.
pids_of_this_cluster() {
    local dir pid
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        alive_as "$pid" "$1" || continue
        tr '\0' '\n' 2>/dev/null <"$dir/environ" | grep -qxF "SLURM_CONF=$CONF" && echo "$pid"
    done
    return 0
}

# Wait up to 10 s for this cluster's processes named $1 to end, then SIGKILL what is left.
reap_cluster_processes() {
    local comm="$1" i pid pids left
    pids="$(pids_of_this_cluster "$comm")"
    for ((i = 0; i <= 100; i++)); do
        left=""
        for pid in $pids; do alive_as "$pid" "$comm" && left="$left $pid"; done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    log "killing leftover $comm:$left"
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $left 2>/dev/null || true
}

ensure_installed() {
    local missing=()
    for tool in slurmctld slurmd sbatch munged mungekey; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "Slurm is not installed (${missing[*]} missing) and installing it needs root"
    command -v apt-get >/dev/null || die "Slurm is not installed (${missing[*]} missing) and there is no apt-get"
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${PACKAGES[@]}" >/dev/null ||
        { apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null &&
            apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${PACKAGES[@]}" >/dev/null; } ||
        die "apt-get could not install ${PACKAGES[*]}"
}

write_conf() {
    local host hardware memory
    host="$(uname -n)"
    hardware="$(slurmd -C | head -n 1)"
    memory="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")"
    [ -n "$memory" ] || die "cannot read RealMemory from 'slurmd -C': $hardware"
    # The nodes share the machine's memory.
    memory=$((memory / ${#NODES[@]}))
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm-local.sh; regenerated on every start.
ClusterName=nbdist
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$B/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$B/state/ctld
SlurmdSpoolDir=$B/state/d-%n
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd-%n.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default every job takes the whole node's memory, so only one would run at a time.
DefMemPerCPU=1024
# Impossible requests are rejected by sbatch instead of pending forever.
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
# No cgroups here: memory (--mem) is enforced by polling the job's RSS every second.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/filetxt
JobCompLoc=$B/log/jobcomp.txt
MinJobAge=300
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
OverTimeLimit=0
SlurmdParameters=config_overrides
MaxArraySize=$MAX_ARRAY_SIZE
GresTypes=gpu
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=6821 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$memory Gres=gpu:$GPUS_PER_NODE State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=6822 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$memory Gres=gpu:$GPUS_PER_NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # GPUs without GPUs: slurmd counts a GRES only when it has a device file.
    touch "$B/gpu0" "$B/gpu1"
    echo "NodeName=n[1-2] Name=gpu File=$B/gpu[0-1]" >"$B/gres.conf.tmp"
    mv "$B/gres.conf.tmp" "$B/gres.conf"
    mv "$CONF.tmp" "$CONF"
}

start_node() {
    local node="$1"
    install -d -m 0755 "$B/state/d-$node"
    pid_of "$B/run/slurmd-$node.pid" slurmd >/dev/null && return 0
    SLURM_CONF="$CONF" slurmd -N "$node" || die "slurmd $node did not start (see $B/log/slurmd-$node.log)"
}

all_nodes_running() {
    local node
    for node in "${NODES[@]}"; do pid_of "$B/run/slurmd-$node.pid" slurmd >/dev/null || return 1; done
}

start_munge() {
    pid_of "$B/run/munged.pid" munged >/dev/null && return 0
    install -d -o munge -g munge -m 0755 "$B/munge"
    [ -s "$B/munge/munge.key" ] || runuser -u munge -- mungekey --create --keyfile="$B/munge/munge.key"
    chown munge:munge "$B/run" "$B/log"
    rm -f "$B/munge/munge.socket" "$B/munge/munge.socket.lock"
    runuser -u munge -- munged --socket="$B/munge/munge.socket" --key-file="$B/munge/munge.key" \
        --log-file="$B/log/munged.log" --pid-file="$B/run/munged.pid" --seed-file="$B/munge/munged.seed" ||
        die "munged did not start (see $B/log/munged.log)"
}

start_ctld() {
    pid_of "$B/run/slurmctld.pid" slurmctld >/dev/null && return 0
    # -i: a state file left by an earlier run that does not parse must not stop the controller.
    SLURM_CONF="$CONF" slurmctld -i || die "slurmctld did not start (see $B/log/slurmctld.log)"
}

# Wait until every node (or the one named) reports idle (or mixed/allocated: jobs kept running across a
# controller restart).
wait_ready() {
    local i states="" state ready
    for ((i = 0; i < 300; i++)); do
        states="$(SLURM_CONF="$CONF" sinfo -h -N ${1:+-n "$1"} -o %T 2>/dev/null || true)"
        ready=1
        [ -n "$states" ] || ready=0
        for state in $states; do
            case "$state" in idle | mixed | allocated | completing) ;; *) ready=0 ;; esac
        done
        [ "$ready" = 1 ] && return 0
        sleep 0.1
    done
    die "the nodes did not become idle within 30 s (states: '${states:-no answer}'; see $B/log/)"
}

cmd_start() {
    ensure_installed
    [ "$(id -u)" = 0 ] || die "the local Slurm runs its daemons as root (this script runs as $(id -un))"
    install -d -m 0755 "$B" "$B/run" "$B/log" "$B/state" "$B/state/ctld"
    if pid_of "$B/run/slurmctld.pid" slurmctld >/dev/null && all_nodes_running &&
        pid_of "$B/run/munged.pid" munged >/dev/null; then
        wait_ready
        return 0
    fi
    # A running controller keeps the configuration it read; otherwise write it afresh.
    pid_of "$B/run/slurmctld.pid" slurmctld >/dev/null || write_conf
    start_munge
    start_ctld
    for node in "${NODES[@]}"; do start_node "$node"; done
    wait_ready
    log "up: $(SLURM_CONF="$CONF" sinfo -h -o '%P %D nodes, %c CPUs and %G each, %T' | tr '\n' ' ')(SLURM_CONF=$CONF)"
}

cmd_kill_node() {
    local node="${1:?usage: kill-node NODE}" pid
    pid="$(pid_of "$B/run/slurmd-$node.pid" slurmd)" || die "slurmd $node is not running"
    kill -KILL "$pid"
    # Its job steps die with it, as on a real node failure. slurmstepd's own environment does not name
    # its node; the job processes it runs do (SLURMD_NODENAME): kill those and their slurmstepd.
    local dir parent stat
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        tr '\0' '\n' 2>/dev/null <"$dir/environ" | grep -qxF "SLURMD_NODENAME=$node" || continue
        read -r stat 2>/dev/null <"$dir/stat" || continue
        stat="${stat##*) }"
        parent="$(cut -d' ' -f2 <<<"$stat")"
        alive_as "$parent" slurmstepd && kill -KILL "$parent" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait_gone "$B/run/slurmd-$node.pid" 50 slurmd || true
}

cmd_start_node() {
    local node="${1:?usage: start-node NODE}"
    start_node "$node"
    SLURM_CONF="$CONF" scontrol update nodename="$node" state=resume 2>/dev/null || true
    wait_ready "$node"
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
    printf 'export NBDIST_SLURM_DIR=%q\n' "$B"
}

cmd_status() {
    local ok=0
    for daemon in munged slurmctld "${NODES[@]/#/slurmd-}"; do
        if pid="$(pid_of "$B/run/$daemon.pid" "${daemon%%-*}")"; then echo "$daemon: running (pid $pid)"; else
            echo "$daemon: not running"
            ok=1
        fi
    done
    [ -f "$CONF" ] && SLURM_CONF="$CONF" sinfo -N -o '%N %P %c %m %T' 2>/dev/null || ok=1
    return "$ok"
}

cmd_restart_ctld() {
    local pid
    if pid="$(pid_of "$B/run/slurmctld.pid" slurmctld)"; then
        SLURM_CONF="$CONF" scontrol shutdown slurmctld 2>/dev/null || kill -TERM "$pid"
        wait_gone "$B/run/slurmctld.pid" 100 slurmctld || kill_pidfile "$B/run/slurmctld.pid" slurmctld
    fi
    start_ctld
    wait_ready
}

cmd_stop() {
    local jobs i
    if [ -f "$CONF" ] && pid_of "$B/run/slurmctld.pid" slurmctld >/dev/null; then
        jobs="$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)"
        if [ -n "${jobs// /}" ]; then
            # shellcheck disable=SC2086  # one job id per word
            SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
            # Let the jobs end (KillWait=5 s, then SIGKILL) while slurmd can still hear from their steps.
            for ((i = 0; i < 150; i++)); do
                [ -z "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
        SLURM_CONF="$CONF" scontrol shutdown 2>/dev/null || true
    fi
    wait_gone "$B/run/slurmctld.pid" 100 slurmctld || kill_pidfile "$B/run/slurmctld.pid" slurmctld
    # The controller may have been down, so nobody told the slurmds to stop (slurmd.pid: a one-node layout).
    for node in "${NODES[@]}"; do kill_pidfile "$B/run/slurmd-$node.pid" slurmd; done
    kill_pidfile "$B/run/slurmd.pid" slurmd
    reap_cluster_processes slurmctld
    reap_cluster_processes slurmstepd
    reap_cluster_processes slurmd
    kill_pidfile "$B/run/munged.pid" munged
    log "stopped"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
status) cmd_status ;;
restart-ctld) cmd_restart_ctld ;;
kill-node) cmd_kill_node "${2:-}" ;;
start-node) cmd_start_node "${2:-}" ;;
*) die "usage: $0 start|stop|env|status|restart-ctld|kill-node NODE|start-node NODE" ;;
esac
