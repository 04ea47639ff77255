"""`evalcore export`: a run as plain SQLite tables (sqlite-utils), for a user's own SQL tools.

Tables (each row carries run_id; exporting a run again replaces its rows, other runs stay):
  runs            one row per run: dates, status, work dir, plan and argv (JSON text)
  settings        model, dataset, key, value: every effective-setting key of each model x dataset
                  (model = dataset = '' for the plan's [run] settings)
  result_versions run_id, version, created_at, kind, settings (JSON)
  results         every results version: model, dataset, subtask, metric, value, stderr, n
  samples         model, dataset, sample_index, prompt, generation, choices/logprobs (JSON), pred,
                  gold, correct (primary per-sample metric is 1), metrics (JSON), record (JSON)
  sample_metrics  model, dataset, sample_index, metric, value (one row per per-sample metric)

The file is written beside its destination and moved into place complete; a destination that
is not an SQLite database is refused and left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from evalcore.errors import ReportError
from evalcore.report.data import primary_metric

TABLES = ("runs", "settings", "result_versions", "results", "samples", "sample_metrics")


HINT = "give a new file name, or an SQLite file written by `evalcore export`"


def _text(v) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)


def _check_destination(path: Path) -> None:
    if path.is_dir():
        raise ReportError(f"{path} is a directory", hint=HINT)
    if not path.parent.is_dir():
        raise ReportError(f"{path.parent} does not exist", hint="create the folder first")
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ReportError(f"{path} exists and is not an SQLite database; not overwritten", hint=HINT)


def _rows(ctx, ledger) -> dict[str, list[dict]]:
    from evalcore.engine.rescore import scored_samples
    from evalcore.report.provenance import when

    run_id = ctx.run_id
    run = ledger.run(run_id) or {}
    out: dict[str, list[dict]] = {t: [] for t in TABLES}
    out["runs"].append({"run_id": run_id, "run_dir": str(ctx.run_dir), "status": run.get("status"),
                        "created_at": when(run.get("created_at")), "updated_at": when(run.get("updated_at")),
                        "work_dir": run.get("work_dir"), "n_partitions": run.get("n_partitions"),
                        "plan": run.get("plan_json"), "argv": _text(run.get("argv"))})
    plan_run = (json.loads(run["plan_json"]).get("run", {}) if run.get("plan_json") else {})
    seen: set[tuple[str, str, str]] = set()
    for k, v in plan_run.items():
        seen.add(("", "", k))
        out["settings"].append({"run_id": run_id, "model": "", "dataset": "", "key": k, "value": _text(v)})
    for p in ledger.partitions(run_id):
        for k, v in json.loads(p["key_json"] or "{}").items():
            if (p["model_key"], p["dataset_key"], k) not in seen:
                seen.add((p["model_key"], p["dataset_key"], k))
                out["settings"].append({"run_id": run_id, "model": p["model_key"], "dataset": p["dataset_key"],
                                        "key": k, "value": _text(v)})
    versions = ledger.result_versions(run_id)
    for v in versions:
        out["result_versions"].append({"run_id": run_id, "version": v["version"], "created_at": when(v["created_at"]),
                                       "kind": v["kind"], "settings": _text(v["settings"])})
        for r in ledger.results(run_id, v["version"], subtasks=True):
            out["results"].append({"run_id": run_id, "results_version": v["version"], "model": r["model_key"],
                                   "dataset": r["dataset_key"], "subtask": r["subtask"], "metric": r["metric"],
                                   "value": r["value"], "stderr": r["stderr"], "n": r["n"]})
    newest = versions[-1] if versions else None
    for rec in scored_samples(ctx, ledger, newest):
        m = rec.get("metrics") or {}
        key = primary_metric(list(m))
        base = {"run_id": run_id, "model": rec["model"], "dataset": rec["dataset"], "sample_index": rec.get("index")}
        out["samples"].append({**base, "prompt": rec.get("prompt"), "generation": rec.get("generation"),
                               "choices": _text(rec.get("choices")), "logprobs": _text(rec.get("logprobs")),
                               "pred": _text(rec.get("pred")), "gold": _text(rec.get("gold")),
                               "group": rec.get("group"), "correct": None if key is None else int(m[key] == 1.0),
                               "metrics": _text(m), "record": _text({k: v for k, v in rec.items()
                                                                     if k not in ("model", "dataset")})})
        out["sample_metrics"] += [{**base, "metric": k, "value": v} for k, v in m.items()]
    return out


PKS = {"runs": ("run_id",), "settings": ("run_id", "model", "dataset", "key"),
       "result_versions": ("run_id", "version"),
       "results": ("run_id", "results_version", "model", "dataset", "subtask", "metric"),
       "samples": ("run_id", "model", "dataset", "sample_index"),
       "sample_metrics": ("run_id", "model", "dataset", "sample_index", "metric")}


def export_run(ctx, ledger, path: Path) -> dict[str, int]:
    """Write the run into `path`; returns rows per table."""
    import sqlite_utils

    path = Path(path)
    _check_destination(path)
    rows = _rows(ctx, ledger)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.exists():
            shutil.copyfile(path, tmp)
        db = sqlite_utils.Database(tmp)
        try:
            with db.conn:
                for table in TABLES:
                    t = db[table]
                    if t.exists():
                        t.delete_where("run_id = ?", [ctx.run_id])
                    if rows[table]:
                        t.insert_all(rows[table], pk=PKS[table], alter=True, replace=True)
                    elif not t.exists():
                        t.create({c: str for c in PKS[table]}, pk=PKS[table])
        finally:
            db.close()
        os.replace(tmp, path)
    except sqlite3.DatabaseError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"{path}: cannot write the export: {exc}; the file was left as it was", hint=HINT) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {t: len(r) for t, r in rows.items()}
