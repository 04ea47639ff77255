"""Waiting on conditions, never on timings: a poll with a generous deadline, and processes
started together (each says it is ready, then all are released at once)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, every: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns something truthy (and return it), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(every)


def ready_then_wait(go: str | os.PathLike[str]) -> None:
    """In a spawned process: say this process is ready, then wait for the start signal `go`."""
    Path(f"{go}.ready.{os.getpid()}").touch()
    while not os.path.exists(go):
        time.sleep(0.001)


def run_spawned(fn: Callable[..., Any], arglists: Sequence[tuple], go: Path, timeout: float = 600.0) -> list:
    """Run fn(*args) for each arglist in its own spawned process, all released at once: `go` is
    created once every process has called `ready_then_wait(go)`. The timeout is generous, for a
    loaded machine; results come back in the order of `arglists`."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(arglists)) as pool:
        pending = [pool.apply_async(fn, args) for args in arglists]
        wait_for(lambda: len(list(go.parent.glob(f"{go.name}.ready.*"))) >= len(arglists), timeout, 0.005,
                 "the spawned processes never became ready")
        go.touch()
        return [p.get(timeout=timeout) for p in pending]
