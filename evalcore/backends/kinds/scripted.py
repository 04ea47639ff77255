"""The scripted stand-in (evalcore/backends/scripted.py): deterministic answers from a hash of
the input, for dry runs of a plan and the scheduler's tests; it reads no files and no GPU."""

from __future__ import annotations

from types import MappingProxyType

from evalcore.backends.registry import BackendKind

KIND = BackendKind(
    name="scripted",
    summary="deterministic stand-in, for dry runs and tests (never for scores)",
    load="evalcore.backends.scripted:load",
    options=MappingProxyType({"load_seconds": float, "sample_seconds": float, "generation": str,
                              "barrier_dir": str, "barrier_count": int, "barrier_timeout": float}),
    reads_files=False,
    uses_gpu=False,
)
