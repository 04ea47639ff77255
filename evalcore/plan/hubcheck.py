"""`--no-offline`: before anything starts, check within seconds that the hub can be reached, so
a run that was allowed the network does not stall for minutes in the HF libraries' retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from evalcore.errors import HubUnreachable
from evalcore.plan.sources import plan_sources
from evalcore.plan.spec import Plan

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 5.0


def check_hub_reachable(plan: Plan, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise HubUnreachable when the plan needs the hub and a TCP connection to it fails."""
    if not plan_sources(plan):  # everything is a local folder or file
        return
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    url = urlsplit(endpoint)
    host = url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    if not host:
        raise HubUnreachable(f"HF_ENDPOINT={endpoint!r} is not a URL")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise HubUnreachable(f"--no-offline: the hub {endpoint} cannot be reached ({host}:{port}: "
                             f"{exc.strerror or exc}); nothing was started") from None


__all__ = ["check_hub_reachable"]
