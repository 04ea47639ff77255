# Source this to talk to a test cluster started with scripts/slurm/start-cluster.sh BASE:
#   source scripts/slurm/env.sh BASE        (or: source BASE/env.sh, which start-cluster.sh writes)
# Clients (sinfo, squeue, sbatch, ...) find the cluster through SLURM_CONF; nothing is in /etc.
if [ -n "${1:-}" ]; then
    export SLURM_CONF="$(cd "$1" && pwd)/etc/slurm.conf"
    export PATH="$PATH:/usr/sbin"
else
    echo "usage: source scripts/slurm/env.sh BASE" >&2
fi
