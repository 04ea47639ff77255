#!/usr/bin/env bash
# Install bubblewrap (bwrap), the OS sandbox that runs model-written code (evalcore/isolation/nsbox.py), if missing.
#   bash scripts/install-bubblewrap.sh
# Needs root (or sudo) and the Debian package mirror. Does nothing when bwrap is present.
set -euo pipefail

if command -v bwrap >/dev/null 2>&1; then
    exit 0
fi
echo "bubblewrap: bwrap missing; installing the Debian package bubblewrap"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "bubblewrap: need root (or sudo) to install it: apt-get install bubblewrap" >&2
        exit 1
    fi
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends bubblewrap
