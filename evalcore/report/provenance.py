"""Everything a run recorded about how it was made, as plain JSON-like data for a report: the run
row, the plan, the resolved artefacts (model and dataset commits and hashes), the effective
settings of every model x dataset, hosts, dates, durations, model loads, failures, and any ledger
table this module does not know. Read generically (every column, every key), so what a newer
evalcore records shows up without a change here."""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
from collections.abc import Mapping
from typing import Any

KNOWN_TABLES = {"runs", "partitions", "attempts", "loads", "samples", "results", "result_versions"}


def when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger row with its *_json columns parsed and its *_at columns as dates."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith("_json") and isinstance(v, str):
            try:
                out[k[:-5]] = json.loads(v)
                continue
            except ValueError:
                pass
        out[k] = when(v) if k.endswith("_at") and isinstance(v, (int, float)) else v
    return out


def _units(partitions: list[dict]) -> list[dict]:
    """Per model x dataset: its effective settings (the partition key: every key it has) and
    timings (partitions, samples, first start, last finish, busy seconds, attempts, hosts)."""
    units: dict[tuple[str, str], dict] = {}
    for p in partitions:
        u = units.setdefault((p["model_key"], p["dataset_key"]), {
            "model": p["model_key"], "dataset": p["dataset_key"], "settings": {}, "partitions": 0, "done": 0,
            "samples": 0, "samples_done": 0, "started": None, "finished": None, "busy_s": 0.0, "attempts": 0,
            "hosts": set()})
        row = _decode({k: v for k, v in p.items() if k.endswith("_json")})
        for name, value in row.items():
            if isinstance(value, dict) and value:
                u["settings"].update(value if name == "key" else {f"{name}.{k}": v for k, v in value.items()})
        u["partitions"] += 1
        u["done"] += p["status"] == "done"
        u["samples"] += p["n_samples"]
        u["samples_done"] += p["n_done"]
        u["attempts"] += p["attempts"]
        if p.get("host"):
            u["hosts"].add(p["host"])
        if p.get("started_at") is not None:
            u["started"] = p["started_at"] if u["started"] is None else min(u["started"], p["started_at"])
        if p.get("finished_at") is not None:
            u["finished"] = p["finished_at"] if u["finished"] is None else max(u["finished"], p["finished_at"])
            if p["status"] == "done" and p.get("started_at") is not None:
                u["busy_s"] += p["finished_at"] - p["started_at"]
    out = []
    for u in units.values():
        u["hosts"] = ", ".join(sorted(u["hosts"]))
        u["wall_s"] = (u["finished"] - u["started"]) if u["started"] is not None and u["finished"] is not None else None
        u["started"], u["finished"] = when(u["started"]), when(u["finished"])
        out.append(u)
    return out


def gather(ctx, ledger) -> dict[str, Any]:
    run_id = ctx.run_id
    run = ledger.table_rows("runs", run_id)
    run_row = _decode(run[0]) if run else {}
    plan = run_row.pop("plan", None)
    try:
        run_doc = json.loads((ctx.run_dir / "run.json").read_text())
    except (OSError, ValueError):
        run_doc = {}
    artefacts = {k: v for k, v in run_doc.items() if k not in ("plan", "run_id")}
    partitions = ledger.partitions(run_id)
    failures = [{"partition": p["partition_id"], "status": p["status"], "attempts": p["attempts"],
                 "error_class": p.get("error_class"), "error_message": p.get("error_message"),
                 "traceback": p.get("error_traceback")}
                for p in partitions if p["status"] != "done"]
    attempts = [_decode({k: v for k, v in a.items() if k not in ("token", "run_id")})
                for a in ledger.attempts(run_id) if a["outcome"] not in ("done", "running")]
    loads = [{**x, "started_at": when(x["started_at"])} for x in ledger.loads(run_id)]
    other = {}
    for t in ledger.tables():
        if t not in KNOWN_TABLES:
            other[t] = [_decode(r) for r in ledger.table_rows(t, run_id, limit=500)]
    versions = [{**v, "created_at": when(v["created_at"])} for v in ledger.result_versions(run_id)]
    units = _units(partitions)
    libraries = library_versions([run_row, artefacts, other, [u["settings"] for u in units]])
    return {"run": run_row, "plan": plan, "artefacts": artefacts, "units": units, "libraries": libraries,
            "failures": failures, "attempts": attempts, "loads": loads, "result_versions": versions,
            "other_tables": other, "report_env": report_environment()}


def library_versions(found: Any) -> dict[str, Any]:
    """Every `versions` mapping the run recorded anywhere (e.g. {"torch": ..., "transformers":
    ...} of a backend), merged; empty when the ledger records none."""
    out: dict[str, Any] = {}
    if isinstance(found, Mapping):
        for k, v in found.items():
            if k.rsplit(".", 1)[-1] in ("versions", "library_versions") and isinstance(v, Mapping):
                out.update(v)
            else:
                out.update(library_versions(v))
    elif isinstance(found, list):
        for v in found:
            out.update(library_versions(v))
    return out


def report_environment() -> dict[str, str]:
    """Where and with what this report was made (not the run: that is in the sections above)."""
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for name in ("cachekit-evalcore", "jinja2", "matplotlib"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = "not installed"
    return {"made_at": when(dt.datetime.now(dt.UTC).timestamp()), "host": socket.gethostname(),
            "python": platform.python_version(), **libs}
