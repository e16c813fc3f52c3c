#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the cluster tests (tests/test_cluster.py) and CI.
#
#   sudo .ci/slurm-setup.sh        # install slurm-wlm + munge, configure this host, start, wait until idle
#
# Debian 12, run as root. Installs with apt-get, writes /etc/slurm/slurm.conf for this host (`hostname -s`,
# CPUs and memory as slurmd detects them; partitions `debug` (default) and `long`; cons_tres; linuxproc process
# tracking; no task plugin, no cgroups; JobRequeue=1, ReturnToService=2, short MinJobAge; cred_expire=10 so that a
# requeued job may start again after ~10 s instead of the default 120 s), creates the munge key,
# starts munged, slurmctld and slurmd (with systemd when it runs, else as plain daemons) and waits until `sinfo`
# shows the node idle. Idempotent: when everything is up with the same configuration it returns at once.
set -euo pipefail

log() { echo "slurm-setup: $*"; }
die() { echo "slurm-setup: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

HOST=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/lib/slurm
LOGS=/var/log/slurm
MARK="# marketgpt single-node test cluster (.ci/slurm-setup.sh)"
WAIT_S=${SLURM_SETUP_WAIT:-90}

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }   # a trailing * means "not responding"

pid_alive() {  # pid_alive PIDFILE NAME: the process in PIDFILE is running and is NAME
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm"
}

munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# --- 1. packages ---------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- 2. slurm.conf for this host ---------------------------------------------------------------------
# `slurmd -C` prints this machine as slurmd sees it: NodeName=... CPUs=... Boards=... RealMemory=...
DETECTED=$(slurmd -C | head -n1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$DETECTED")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$DETECTED")
[ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not read CPUs and memory from 'slurmd -C': $DETECTED"
MEM=$((MEM * 95 / 100))                       # a little under what slurmd detects, so the node is never invalid
TOPOLOGY=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$DETECTED" || true)

NEW_CONF=$(cat <<EOF
$MARK
ClusterName=marketgpt
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEM / CPUS))
JobRequeue=1
ReturnToService=2
MinJobAge=30
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=5
KillWait=15
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS $TOPOLOGY RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=long Nodes=$HOST MaxTime=INFINITE State=UP
EOF
)

CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && cp "$CONF" "$CONF.before-marketgpt"
    mkdir -p "$CONF_DIR"
    printf '%s\n' "$NEW_CONF" >"$CONF"
    CHANGED=1
    log "wrote $CONF: node $HOST, $CPUS CPUs, ${MEM} MB, partitions debug (default) and long"
fi

# quick path: same configuration and everything already up
if [ "$CHANGED" = 0 ] && munge_ok && pid_alive /run/slurmctld.pid slurmctld && pid_alive /run/slurmd.pid slurmd \
        && [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; then
    log "already up: node $HOST $(node_state)"
    exit 0
fi

mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"

# --- 3. munge -----------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! munge_ok; then
    log "starting munged"
    if have_systemd; then
        systemctl enable --now munge >/dev/null 2>&1 || systemctl restart munge
    else
        install -d -o munge -g munge -m 0755 /run/munge
        install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
        runuser -u munge -- /usr/sbin/munged
    fi
    for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
    munge_ok || die "munged does not answer (munge -n | unmunge fails)"
fi

# --- 4. slurmctld and slurmd -----------------------------------------------------------------------------
start_daemon() {  # start_daemon NAME
    local name=$1 pidfile=/run/$1.pid
    if have_systemd; then
        if [ "$CHANGED" = 1 ] || ! systemctl is-active --quiet "$name"; then
            systemctl enable "$name" >/dev/null 2>&1 || true
            systemctl restart "$name"
        fi
        return
    fi
    if pid_alive "$pidfile" "$name"; then
        [ "$CHANGED" = 1 ] || return 0
        log "restarting $name (configuration changed)"
        kill "$(cat "$pidfile")"
        for _ in $(seq 50); do pid_alive "$pidfile" "$name" || break; sleep 0.2; done
    else
        log "starting $name"
    fi
    "/usr/sbin/$name"                                    # forks into the background, writes $pidfile
}
start_daemon slurmctld
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
start_daemon slurmd

# --- 5. wait until the node is idle ------------------------------------------------------------------
state=""
for i in $(seq $((WAIT_S * 2))); do
    state=$(node_state)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        drain*|down*|fail*|inval*)
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
if [[ "$state" =~ ^(idle|mixed|allocated|completing)$ ]]; then
    # the controller may still show the state it saved before a restart: run one task to be sure slurmd works
    if timeout 120 srun --job-name=slurm-setup-check -N1 -n1 -t 1 true; then
        log "up: node $HOST $(node_state); partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"
        exit 0
    fi
    state="$state, but a test task (srun true) failed"
fi
echo "slurm-setup: error: node $HOST is '${state:-not registered}' after ${WAIT_S}s" >&2
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
exit 1
