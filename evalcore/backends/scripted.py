"""A deterministic stand-in for a model: log-likelihoods and generations derived from a hash of
the input, with configurable load and per-sample costs. For dry runs of a plan, the scheduler's
tests and the scheduling benchmark; never for scores."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import GenRequest, LoglikRequest, LoglikResult


def _unit(*parts: str) -> float:
    h = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _meet(folder: Path, count: int, timeout: float) -> None:
    """A barrier for tests of concurrency: each load leaves a note (its process, host and
    CUDA_VISIBLE_DEVICES) in `folder` and waits until `count` loads have, so that those workers
    provably held their partitions at the same time, however slowly each one started."""
    folder.mkdir(parents=True, exist_ok=True)
    note = folder / f"{socket.gethostname()}-{os.getpid()}"
    tmp = note.with_name("." + note.name)
    tmp.write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "") + "\n")
    os.replace(tmp, note)
    deadline = time.monotonic() + timeout
    while sum(1 for p in folder.iterdir() if not p.name.startswith(".")) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"scripted barrier: fewer than {count} loads reached {folder} in {timeout:.0f} s")
        time.sleep(0.05)


class ScriptedBackend:
    def __init__(self, name: str, options: Mapping | None = None) -> None:
        options = dict(options or {})
        self.name = name
        self.sample_seconds = float(options.get("sample_seconds", 0.0))
        # a fixed answer to every generation request (to test what a plan does with a given output)
        self.generation = options.get("generation")
        if self.generation is not None and not isinstance(self.generation, str):
            raise ValueError(f"scripted backend {name}: 'generation' must be a string")
        time.sleep(float(options.get("load_seconds", 0.0)))
        if options.get("barrier_dir"):
            _meet(Path(options["barrier_dir"]), int(options.get("barrier_count", 1)),
                  float(options.get("barrier_timeout", 300.0)))

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[LoglikResult]:
        out = []
        for r in requests:
            time.sleep(self.sample_seconds)
            lps = tuple(-10.0 * _unit(self.name, r.context, c) - len(c) * 0.01 for c in r.continuations)
            best = max(range(len(lps)), key=lps.__getitem__) if lps else -1
            out.append(LoglikResult(lps, tuple(i == best for i in range(len(lps))), tuple(len(c.split()) for c in r.continuations)))
        return out

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        out = []
        for r in requests:
            time.sleep(self.sample_seconds)
            out.append(self.generation if self.generation is not None
                       else f"answer {int(_unit(self.name, r.prompt) * 100)}")
        return out

    def identity(self) -> dict:
        return {"backend": "scripted", "name": self.name}

    def close(self) -> None:
        pass


def load(settings, **options) -> ScriptedBackend:
    """The `scripted` backend's loader (evalcore/backends/kinds/scripted.py): the plan's
    backend_options, then `options`."""
    return ScriptedBackend(settings.name, {**dict(settings.backend_options), **options})
