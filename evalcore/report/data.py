"""The figures a report shows, as plain data (numbers stay numbers): long result rows with n and
standard error, the newest results version and what made it, the best model per row. Pure, apart
from `gather`, which reads them from a run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from evalcore.report.tables import PRIMARY

FIELDS = ("dataset", "task_version", "metric", "mode", "model", "subtask", "value", "stderr", "n",
          "results_version")


def long_rows(results: Sequence[Mapping], versions: Mapping[str, str], modes: Mapping[str, str],
              models: Sequence[str], datasets: Sequence[str], results_version: int) -> list[dict]:
    """One row per model x dataset x subtask x metric, in plan order (datasets, then primary
    metric first, the whole dataset before its subtasks, then models)."""
    order_d = {d: i for i, d in enumerate(datasets)}
    order_m = {m: i for i, m in enumerate(models)}
    rows = [{"dataset": r["dataset_key"], "task_version": versions.get(r["dataset_key"], ""), "metric": r["metric"],
             "mode": modes.get(r["dataset_key"], ""), "model": r["model_key"], "subtask": r.get("subtask") or "",
             "value": r["value"], "stderr": r["stderr"], "n": r["n"], "results_version": results_version}
            for r in results]
    rows.sort(key=lambda r: (order_d.get(r["dataset"], len(order_d)), r["dataset"], r["subtask"] != "",
                             r["subtask"], r["metric"] not in PRIMARY, r["metric"],
                             order_m.get(r["model"], len(order_m)), r["model"]))
    return rows


def primary_metric(names: Sequence[str]) -> str | None:
    """The metric a dataset is judged by: the first of PRIMARY it has, else the first by name."""
    for p in PRIMARY:
        if p in names:
            return p
    return sorted(names)[0] if names else None


def summary_grid(rows: Sequence[Mapping], models: Sequence[str]) -> list[dict]:
    """Datasets x metrics (whole-dataset rows only), a cell per model {value, stderr, n} or
    None, and `best`: the models with the highest value in that row (ties all marked)."""
    grid: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["subtask"]:
            continue
        g = grid.setdefault((r["dataset"], r["metric"]), {"dataset": r["dataset"], "metric": r["metric"],
                                                          "mode": r["mode"], "task_version": r["task_version"],
                                                          "cells": {m: None for m in models}})
        g["cells"][r["model"]] = {"value": r["value"], "stderr": r["stderr"], "n": r["n"]}
    out = []
    for g in grid.values():
        vals = {m: c["value"] for m, c in g["cells"].items() if c and c["value"] is not None}
        top = max(vals.values()) if vals else None
        # ties all marked; nothing marked where every model has the same figure
        g["best"] = sorted(m for m, v in vals.items() if v == top) if len(set(vals.values())) > 1 else []
        out.append(g)
    return out


def version_note(version: Mapping | None, count: int) -> str:
    """'results version 2 of 2 (rescore, 2026-11-28 10:15 UTC; metrics: gsm8k)'."""
    if version is None:
        return "no results yet"
    when = dt.datetime.fromtimestamp(version["created_at"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    req = version.get("settings", {}).get("requested") or {}
    extra = []
    if req.get("metrics"):
        extra.append("metrics: " + ", ".join(req["metrics"]))
    if req.get("filter"):
        extra.append(f"filter: {req['filter']}")
    if req.get("datasets"):
        extra.append("datasets: " + ", ".join(req["datasets"]))
    tail = "; " + "; ".join(extra) if extra else ""
    return f"results version {version['version']} of {count} ({version['kind']}, {when}{tail})"


def gather(ctx, ledger) -> dict:
    """What every report format starts from: the run's plan order, task versions and modes, the
    newest results version (with its note) and its long rows, subtasks included."""
    tasks = ctx.tasks()
    versions = ledger.result_versions(ctx.run_id)
    newest = versions[-1] if versions else None
    models = [m.name for m in ctx.plan.models]
    datasets = [d.abbr for d in ctx.plan.datasets]
    results = ledger.results(ctx.run_id, newest["version"] if newest else None, subtasks=True)
    rows = long_rows(results, {d: t.version for d, t in tasks.items()},
                     {d: "ppl" if t.mode == "ll" else "gen" for d, t in tasks.items()}, models, datasets,
                     newest["version"] if newest else 0)
    return {"run_id": ctx.run_id, "models": models, "datasets": datasets, "tasks": tasks, "rows": rows,
            "version": newest, "versions": versions, "note": version_note(newest, len(versions))}


def render_machine(data: Mapping, fmt: str) -> str:
    """JSON (one document: run, results version, rows) or CSV (one row per figure)."""
    import csv
    import io
    import json

    if fmt == "json":
        return json.dumps({"run_id": data["run_id"], "results_version": data["version"],
                           "results": data["rows"]}, indent=1)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if r[k] is None else r[k]) for k in FIELDS} for r in data["rows"])
    return buf.getvalue().rstrip("\n")
