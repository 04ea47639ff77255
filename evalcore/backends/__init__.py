"""Inference backends: what every backend takes and returns (`base`: the request and result
records, the `Backend` protocol, `ModelSettings`), the one description of a model (`model`), the
file names of a checkpoint (`checkpoint`), the backends by name (`registry`, one module per
backend in `kinds/`), and the backends themselves: `hf` (transformers; with `prefix` and
`genbatch`) and `scripted` (a deterministic stand-in).

Importing this package, looking a backend up or checking its options loads no heavy library:
`load_backend` imports the backend's code (torch, transformers) only when a model is loaded.

May import: `evalcore.errors` (and torch/transformers, inside the backends' own modules).
"""

from __future__ import annotations

from typing import Any

from .base import (
    Backend,
    FrozenMap,
    GenRequest,
    LoglikRequest,
    LoglikResult,
    ModelSettings,
    prefetch_hint,
)
from .model import ModelSpec
from .registry import BackendKind, backend_kind, backend_names

__all__ = [
    "Backend", "BackendKind", "FrozenMap", "GenRequest", "LoglikRequest", "LoglikResult",
    "ModelSettings", "ModelSpec", "backend_kind", "backend_names",
    "load_backend", "prefetch_hint",
]


def load_backend(settings: ModelSettings, **options: Any) -> Backend:
    """Load the model `settings` names with its backend (`settings.backend`, "hf" unless told);
    `options` pass through to the backend over the plan's backend_options (for `hf`: packed,
    prefix_reuse, token_budget)."""
    return backend_kind(settings.backend, f"model {settings.name}").loader()(settings, **options)
