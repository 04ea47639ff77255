"""Built-in benchmark names and the hub dataset each one reads: a view of the one registry
(evalcore/benchmarks), kept for the callers that need only the hub coordinates."""

from __future__ import annotations

from evalcore.benchmarks.builtin import BUILTIN
from evalcore.benchmarks.definition import HubRef
from evalcore.benchmarks.registry import builtin

DatasetRef = HubRef

CATALOG: dict[str, HubRef] = {name: t.hub for name, t in BUILTIN.items() if t.hub is not None}


def lookup(name: str) -> HubRef:
    hub = builtin(name).hub
    assert hub is not None
    return hub
