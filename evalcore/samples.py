"""Reading a run's per-sample records back from the ledger: the one place that turns a stored
`output_json` into the dict every reader (finalize, rescore, the HTML report, compare, export)
works on. Each record carries `model` and `dataset` (from its partition) next to what the worker
stored: index, prompt, choices + logprobs or the generation, pred, gold, metrics, group, ..."""

from __future__ import annotations

import json
from collections.abc import Iterator


def owners(partitions: list[dict]) -> dict[str, tuple[str, str]]:
    """partition id -> (model, dataset)."""
    return {p["partition_id"]: (p["model_key"], p["dataset_key"]) for p in partitions}


def complete_units(partitions: list[dict]) -> set[tuple[str, str]]:
    """The (model, dataset) pairs whose partitions are all done: only those have results."""
    state: dict[tuple[str, str], bool] = {}
    for p in partitions:
        key = (p["model_key"], p["dataset_key"])
        state[key] = state.get(key, True) and p["status"] == "done"
    return {k for k, ok in state.items() if ok}


def read_samples(ledger, run_id: str, partitions: list[dict] | None = None) -> Iterator[dict]:
    """Every sample record of a run, in ledger order, as a dict with `model` and `dataset`."""
    owner = owners(partitions if partitions is not None else ledger.partitions(run_id))
    for pid, _idx, out in ledger.samples(run_id):
        model, dataset = owner[pid]
        yield {"model": model, "dataset": dataset, **json.loads(out)}


def by_unit(ledger, run_id: str, *, complete_only: bool = True) -> dict[tuple[str, str], list[dict]]:
    """Sample records grouped by (model, dataset); by default only units whose partitions are
    all done."""
    parts = ledger.partitions(run_id)
    keep = complete_units(parts) if complete_only else None
    out: dict[tuple[str, str], list[dict]] = {}
    for rec in read_samples(ledger, run_id, parts):
        key = (rec["model"], rec["dataset"])
        if keep is None or key in keep:
            out.setdefault(key, []).append(rec)
    return out
