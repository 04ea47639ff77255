"""Where a model runs, from its settings and the GPUs its worker leased. Pure.

One GPU: the model is moved to it. More than one (`num_gpus > 1`), or a `device_map` the user
gave: the model is spread with `device_map` (accelerate) over exactly the leased GPUs, the only
ones the worker sees (CUDA_VISIBLE_DEVICES), with `max_memory` naming those devices and no CPU
or disk offload. Without a GPU the model runs on the CPU and GPU-only settings are dropped
(the run's settings record says so)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from evalcore.backends.model import GPU_ONLY_KWARGS

LEASED = "leased"  # max_memory marker: every leased GPU at its full size (the backend measures them)


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu"
    device_map: str | dict | None
    max_memory: dict | str | None
    ignored: tuple[str, ...] = ()


def placement(model_kwargs: Mapping, leased_gpus: int, on_gpu: bool) -> Placement:
    if not on_gpu:
        ignored = tuple(f"{k}={model_kwargs[k]!r}" for k in GPU_ONLY_KWARGS if k in model_kwargs)
        return Placement("cpu", None, None, ignored)
    device_map = model_kwargs.get("device_map")
    if device_map is None and leased_gpus <= 1:
        return Placement("cuda", None, model_kwargs.get("max_memory"))
    return Placement("cuda", device_map or "auto", model_kwargs.get("max_memory") or LEASED)


__all__ = ["Placement", "placement", "GPU_ONLY_KWARGS", "LEASED"]
