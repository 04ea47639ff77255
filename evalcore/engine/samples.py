"""Reading a run's per-sample records back from the ledger: the one place that turns a stored
`output_json` into the dict every reader (finalize, rescore, the HTML report, compare, export)
works on. Each record carries `model` and `dataset` (from its partition) next to what the worker
stored: index, prompt, choices + logprobs or the generation, pred, gold, metrics, group, ...

Records that store their model calls as a `requests` list ({context, continuation,
loglikelihood, greedy} per choice, or {context, generation, filtered}) also get the flat fields
(prompt, continuations, logprobs, greedy / generation) derived from it by `normalise`, so
readers see one shape whichever format wrote the sample."""

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


def normalise(rec: dict) -> dict:
    """The flat fields of a record that keeps its model calls in `requests` (kept as well)."""
    reqs = rec.get("requests")
    if not isinstance(reqs, list) or not reqs or not all(isinstance(r, dict) for r in reqs):
        return rec
    out = dict(rec)
    contexts = [r.get("context", "") for r in reqs]
    if all("loglikelihood" in r for r in reqs) and "logprobs" not in rec:
        out.setdefault("prompt", contexts[0] if len(set(contexts)) == 1 else "\n---\n".join(contexts))
        out["continuations"] = [r.get("continuation", "") for r in reqs]
        out["logprobs"] = [r["loglikelihood"] for r in reqs]
        out["greedy"] = [bool(r.get("greedy")) for r in reqs]
        if len(set(contexts)) > 1:          # multiple-input form: the choices are the contexts
            out.setdefault("choices", contexts)
    elif "generation" in reqs[0] and "generation" not in rec:
        out.setdefault("prompt", contexts[0])
        out["generation"] = reqs[0]["generation"]
        if isinstance(reqs[0].get("filtered"), dict):
            out.setdefault("filtered", reqs[0]["filtered"])
    return out


def read_samples(ledger, run_id: str, partitions: list[dict] | None = None) -> Iterator[dict]:
    """Every sample record of a run, in ledger order, as a dict with `model` and `dataset`."""
    owner = owners(partitions if partitions is not None else ledger.partitions(run_id))
    for pid, _idx, out in ledger.samples(run_id):
        model, dataset = owner[pid]
        yield {"model": model, "dataset": dataset, **normalise(json.loads(out))}


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
