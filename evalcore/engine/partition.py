"""Splitting models x datasets into partitions: pure, deterministic, independent of the number of
workers or GPUs (so a run can resume on any machine size).

Cost of a sample: the number of choices for log-likelihood tasks, GEN_COST for generation (a
generated answer takes many forward passes). A partition holds at most `max_size` cost units.
Each partition carries a key: the hash of everything its answers depend on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

GEN_COST = 20  # as OpenCompass's SizePartitioner weighs a generation sample against one choice


@dataclass(frozen=True)
class Unit:
    """One model on one dataset, with what the answers depend on."""

    model: str  # model name (abbr)
    dataset: str  # dataset abbr
    n_samples: int
    cost_per_sample: float
    n_gpus: int
    key: dict  # model commit/content hash, dtype, tokenizer + chat template hash, task version, data hash, settings


@dataclass(frozen=True)
class Part:
    partition_id: str
    model: str
    dataset: str
    start: int
    end: int
    cost: float
    n_gpus: int
    key_hash: str
    key_json: str


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def split(units: list[Unit], max_size: float) -> list[Part]:
    """Partitions of every unit, each at most `max_size` cost (at least one sample each)."""
    parts: list[Part] = []
    for u in sorted(units, key=lambda u: (u.model, u.dataset)):
        if u.n_samples <= 0:
            continue
        per = max(1, int(max_size // max(u.cost_per_sample, 1e-9)))
        n_parts = -(-u.n_samples // per)
        size = -(-u.n_samples // n_parts)  # balanced: sizes differ by at most one chunk
        for start in range(0, u.n_samples, size):
            end = min(u.n_samples, start + size)
            key = {**u.key, "range": [start, end]}
            parts.append(Part(
                partition_id=f"{u.model}/{u.dataset}/{start:07d}-{end:07d}",
                model=u.model, dataset=u.dataset, start=start, end=end,
                cost=(end - start) * u.cost_per_sample, n_gpus=u.n_gpus,
                key_hash=key_hash(key), key_json=json.dumps(key, sort_keys=True),
            ))
    return parts


def diff_keys(old_json: str, new_json: str) -> list[str]:
    """Which parts of a partition's key changed (for a refused resume)."""
    old, new = json.loads(old_json), json.loads(new_json)
    changed = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            changed.append(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}")
    return changed


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 60 else s[:57] + "..."
