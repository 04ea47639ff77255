#!/usr/bin/env bash
# Install the Debian packages of a single-node Slurm test cluster (Slurm + munge), if missing.
#   bash scripts/slurm/install.sh
# Needs root (or sudo) and the Debian package mirror. Does nothing when everything is present.
set -euo pipefail

need=(sinfo squeue sbatch scancel scontrol sacct slurmctld slurmd munged munge mungekey)
missing=()
for cmd in "${need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm: packages already installed"
    exit 0
fi
echo "slurm: missing ${missing[*]}; installing slurmctld slurmd slurm-client munge"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "slurm: need root (or sudo) to install packages" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
