#!/usr/bin/env bash
# Install Chromium (Debian package `chromium`) for the HTML report's browser test, if missing.
#   bash scripts/install_chromium.sh
# Needs root (or sudo) and the Debian package mirror. Does nothing when a Chromium is present.
set -euo pipefail

for cmd in chromium chromium-browser; do
    if command -v "$cmd" >/dev/null 2>&1; then
        echo "chromium: already installed ($(command -v "$cmd"))"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "chromium: need root (or sudo) to install it" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
