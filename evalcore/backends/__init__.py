"""Inference backends. Importing this package loads no heavy library: `load_backend` imports
the Hugging Face backend (torch, transformers) only when a model is actually loaded.
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
    bench_mc,
    prefetch_hint,
)

__all__ = [
    "Backend", "FrozenMap", "GenRequest", "LoglikRequest", "LoglikResult",
    "ModelSettings", "bench_mc", "load_backend", "prefetch_hint",
]


def load_backend(settings: ModelSettings, **options: Any) -> Backend:
    """Load the model `settings` names with the Hugging Face backend (`HFBackend` options pass through)."""
    from .hf import HFBackend

    return HFBackend(settings, **options)
