"""Offline enforcement: the HF offline switches (read by the libraries at import, so they are set
first), a socket guard that refuses every non-loopback connection and names it, and a check of
the libraries' own constants once they are imported. The guard is Python-level; where the host
allows it, local workers also start in a loopback-only network namespace (evalcore/isolation/netns.py)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Mapping, MutableMapping

from evalcore.errors import OfflineViolation

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
}
HF_MODULES = ("huggingface_hub", "transformers", "datasets", "evaluate")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def offline_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` with every offline switch on (pure; for starting worker processes)."""
    return {**base, **OFFLINE_ENV}


def apply_offline_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Switch this process offline. Must run before any HF library is imported: they read the
    switches once, at import. Refuses when one was already imported online."""
    environ = os.environ if environ is None else environ
    environ.update(OFFLINE_ENV)
    early = [m for m in HF_MODULES if m in sys.modules]
    if early:
        check_constants()


def check_constants() -> None:
    """Raise if an imported HF library is not in offline mode (it was imported too early)."""
    hub = sys.modules.get("huggingface_hub")
    if hub is not None:
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            raise OfflineViolation("huggingface_hub was imported before offline mode was set; it would go online")
    ds = sys.modules.get("datasets")
    if ds is not None:
        import datasets.config

        if not datasets.config.HF_HUB_OFFLINE:
            raise OfflineViolation("datasets was imported before offline mode was set; it would go online")


def is_loopback(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def install_socket_guard() -> None:
    """Refuse non-loopback connections and name lookups in this process, naming host and port.

    Loopback stays open (a local Slurm controller, a local hub mirror in tests). Idempotent."""
    if getattr(socket, "_evalcore_guard", False):
        return
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
                and not is_loopback(address[0]):
            raise OfflineViolation(f"offline run: refused a connection to {address[0]}:{address[1]}")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, port, *args, **kwargs):
        if not is_loopback(host):
            raise OfflineViolation(f"offline run: refused to look up {host}:{port}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    socket._evalcore_guard = True  # type: ignore[attr-defined]


def go_offline() -> None:
    """Everything at once, for the driver and each worker: env switches, then the guard."""
    apply_offline_env()
    install_socket_guard()
