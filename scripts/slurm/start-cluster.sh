#!/usr/bin/env bash
# Start a single-node Slurm test cluster (munged + slurmctld + slurmd) with 4 fake GPUs.
#   bash scripts/slurm/start-cluster.sh BASE      then: source BASE/env.sh
# Everything lives under BASE (config, keys, state, logs, fake GPU devices); nothing is written
# to /etc. Clients find the cluster through SLURM_CONF=BASE/etc/slurm.conf. The daemons' PIDs
# go to BASE/run/pids; scripts/slurm/stop-cluster.sh BASE stops exactly those (and the job steps
# of this cluster). Calling it again while the cluster is up does nothing.
# Settings (environment): SLURM_CI_CPUS (CPUs the node advertises, default 8, so that 4 gpu:1
# jobs run at once even on 2 cores), SLURM_CI_GPUS (fake GPUs, default 4), SLURM_CI_PORT
# (slurmctld port, default 6817; slurmd uses the next one).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

[ $# -eq 1 ] || { echo "usage: $0 BASE" >&2; exit 2; }
mkdir -p "$1"
B="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
CPUS_WANTED="${SLURM_CI_CPUS:-8}"
NGPUS="${SLURM_CI_GPUS:-4}"
PORT="${SLURM_CI_PORT:-6817}"
export SLURM_CONF="$B/etc/slurm.conf"   # inherited by slurmstepd: the stop script finds steps by it

node_state() { timeout 20 sinfo -h -n localhost -o %T 2>/dev/null || true; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { awk -v n="$1" '$1 == n {p = $2} END {print p}' "$B/run/pids" 2>/dev/null; }

# Already up?
if [ -f "$B/run/pids" ] && alive "$(pid_of munged)" && alive "$(pid_of slurmctld)" && alive "$(pid_of slurmd)" \
        && [ -n "$(node_state)" ]; then
    echo "slurm: cluster already up in $B (SLURM_CONF=$SLURM_CONF)"
    exit 0
fi

for cmd in munged munge unmunge mungekey slurmctld slurmd sinfo slurmd; do
    command -v "$cmd" >/dev/null || { echo "slurm: $cmd not found; run scripts/slurm/install.sh" >&2; exit 1; }
done
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "slurm: port $PORT is in use (another cluster?); set SLURM_CI_PORT" >&2
    exit 1
fi

# A fresh cluster every start: no jobs recovered from a previous one in this BASE.
rm -rf "$B/state" "$B/spool"
mkdir -p "$B"/{etc,state,spool,run,log,munge,fakegpu}
chmod 755 "$B" "$B/munge"            # munged refuses a socket dir that is not o+x
: > "$B/run/pids"
if [ ! -s "$B/munge/munge.key" ]; then
    mungekey -c -k "$B/munge/munge.key" >/dev/null 2>&1 || dd if=/dev/urandom of="$B/munge/munge.key" bs=128 count=1 status=none
fi
chmod 600 "$B/munge/munge.key"
for ((i = 0; i < NGPUS; i++)); do     # gres File= entries must be character devices
    ln -sfn /dev/null "$B/fakegpu/nvidia$i"
done

# The node as the hardware describes it; RealMemory is 80% of what slurmd sees.
HW="$(slurmd -C | head -1)"
field() { sed -n "s/.*[ ]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
HW_CPUS="$(field CPUs)"; SOCKETS="$(field SocketsPerBoard)"; CORES="$(field CoresPerSocket)"
THREADS="$(field ThreadsPerCore)"; MEM="$(field RealMemory)"
SOCKETS="${SOCKETS:-1}"; CORES="${CORES:-$HW_CPUS}"; THREADS="${THREADS:-1}"
MEM=$(( ${MEM:-2000} * 8 / 10 ))
OVERRIDES=""
CPUS="$HW_CPUS"
if [ "$CPUS_WANTED" -gt "$HW_CPUS" ]; then   # advertise more CPUs than there are (jobs share cores)
    OVERRIDES="SlurmdParameters=config_overrides"
    CPUS="$CPUS_WANTED"; SOCKETS=1; CORES="$CPUS_WANTED"; THREADS=1
fi
GRES_RANGE="0-$((NGPUS - 1))"

cat > "$B/etc/slurm.conf" <<CONF
# single-node test cluster (scripts/slurm/start-cluster.sh)
ClusterName=ci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$B/munge/munge.sock
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$B/log/jobcomp.log
ReturnToService=2
MinJobAge=300
KillWait=30
$OVERRIDES
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$B/etc/gres.conf" <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=$B/fakegpu/nvidia[$GRES_RANGE]
CONF
cat > "$B/env.sh" <<CONF
# source this file to use the test cluster in $B
export SLURM_CONF="$B/etc/slurm.conf"
case ":\$PATH:" in *:/usr/sbin:*) ;; *) export PATH="\$PATH:/usr/sbin" ;; esac
CONF

fail() {
    echo "slurm: $*" >&2
    for f in munged.log slurmctld.log slurmd.log munged.out slurmctld.out slurmd.out; do
        [ -s "$B/log/$f" ] && { echo "--- $B/log/$f (tail)" >&2; tail -n 15 "$B/log/$f" >&2; }
    done
    bash "$HERE/stop-cluster.sh" "$B" >&2 || true
    exit 1
}

start_daemon() {  # name, command...: in its own session, stdin from the null device; PID recorded
    local name="$1"; shift
    setsid "$@" </dev/null >>"$B/log/$name.out" 2>&1 &
    echo "$name $!" >> "$B/run/pids"
}

start_daemon munged munged -F --socket="$B/munge/munge.sock" --key-file="$B/munge/munge.key" \
    --pid-file="$B/munge/munged.pid" --log-file="$B/log/munged.log" --seed-file="$B/munge/munged.seed"
# waits are generous: on a loaded host (CI) the daemons can take many seconds to come up
for _ in $(seq 600); do [ -S "$B/munge/munge.sock" ] && break; alive "$(pid_of munged)" || break; sleep 0.05; done
timeout 30 munge -n -S "$B/munge/munge.sock" | timeout 30 unmunge -S "$B/munge/munge.sock" >/dev/null \
    || fail "munge self-test failed"

start_daemon slurmctld slurmctld -D -f "$SLURM_CONF"
start_daemon slurmd slurmd -D -f "$SLURM_CONF" -N localhost

deadline=$((SECONDS + 180))
until [ "$(node_state)" = idle ]; do
    for d in munged slurmctld slurmd; do
        alive "$(pid_of $d)" || fail "$d exited during start-up"
    done
    [ $SECONDS -lt $deadline ] || fail "the node did not become idle within 180 s (state: $(node_state))"
    sleep 0.2
done
echo "slurm: cluster up in $B: $CPUS CPUs, gpu:$NGPUS (fake), port $PORT. Use: source $B/env.sh"
