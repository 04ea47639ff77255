#!/usr/bin/env bash
# Stop a test cluster started by scripts/slurm/start-cluster.sh BASE.
#   bash scripts/slurm/stop-cluster.sh BASE
# Kills only what that cluster started: the daemons whose PIDs are in BASE/run/pids (when the
# PID still names the same program) and the job steps (slurmstepd) that carry this cluster's
# SLURM_CONF, each with its whole process tree: SIGTERM, then SIGKILL after 10 s. Keeps BASE
# (logs); delete it yourself.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 BASE" >&2; exit 2; }
[ -d "$1" ] || { echo "slurm: $1 does not exist; nothing to stop"; exit 0; }
B="$(cd "$1" && pwd)"
CONF="$B/etc/slurm.conf"

descendants() {  # every process below PID $1 (children first found by parent PID)
    local kids k
    kids="$(ps -o pid= --ppid "$1" 2>/dev/null || true)"
    for k in $kids; do echo "$k"; descendants "$k"; done
}

comm_of() { cat "/proc/$1/comm" 2>/dev/null; }
running() {  # alive and not a zombie (an orphan's zombie stays until PID 1 reaps it)
    local st
    st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
    [ -n "$st" ] && [ "$st" != Z ]
}

targets=()
if [ -f "$B/run/pids" ]; then
    while read -r name pid; do
        [ -n "${pid:-}" ] || continue
        # only if the PID still belongs to that daemon (not a recycled PID)
        [ "$(comm_of "$pid")" = "$name" ] && running "$pid" || continue
        targets+=("$pid")
    done < "$B/run/pids"
fi
# job steps of this cluster: slurmstepd daemonizes away from slurmd, so find it by its SLURM_CONF
for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [ "$(comm_of "$pid")" = slurmstepd ] && running "$pid" || continue
    { tr '\0' '\n' < "$d/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" && targets+=("$pid")
done

all=()
for pid in "${targets[@]}"; do
    all+=("$pid")
    while read -r k; do [ -n "$k" ] && all+=("$k"); done < <(descendants "$pid")
done
if [ ${#all[@]} -eq 0 ]; then
    echo "slurm: nothing running for $B"
    exit 0
fi
kill -TERM "${all[@]}" 2>/dev/null
for _ in $(seq 100); do
    left=(); others=0
    for pid in "${all[@]}"; do
        running "$pid" || continue
        left+=("$pid")
        [ "$(comm_of "$pid")" = slurmstepd ] || others=$((others + 1))
    done
    [ ${#left[@]} -eq 0 ] && break
    if [ "$others" -eq 0 ]; then   # slurmstepd ignores SIGTERM; its job processes are gone
        kill -KILL "${left[@]}" 2>/dev/null
        left=()
        break
    fi
    sleep 0.1
done
if [ ${#left[@]} -gt 0 ]; then
    echo "slurm: SIGKILL to ${left[*]} (still running 10 s after SIGTERM)"
    kill -KILL "${left[@]}" 2>/dev/null
    sleep 0.2
fi
echo "slurm: stopped ${#all[@]} process(es) of $B"
