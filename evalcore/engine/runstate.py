"""What `evalcore status` says about a run beyond its progress: its state (a run whose driver
died is "driver gone", not running), what has every sample but no score, and each failure's
whole error with the log of the worker (or Slurm job) that met it. Reads only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from evalcore.engine.runlock import driver_alive


def run_state(run_dir: Path, recorded: str) -> str:
    """running | done | failed | interrupted | driver gone."""
    if recorded == "running" and driver_alive(run_dir) is False:
        return "driver gone"
    return recorded


def unscored(partitions: Iterable[Mapping], results: Iterable[Mapping]) -> list[tuple[str, str]]:
    """(model, dataset) whose partitions are all done but that has no result row."""
    done: dict[tuple[str, str], bool] = {}
    for p in partitions:
        key = (p["model_key"], p["dataset_key"])
        done[key] = done.get(key, True) and p["status"] == "done"
    scored = {(r["model_key"], r["dataset_key"]) for r in results}
    return sorted(k for k, ok in done.items() if ok and k not in scored)


def error_details(failed: Iterable[Mapping], worker_log: Callable[[str | None], Path | None]) -> str:
    """Every failed partition: whole id, tries, error class and whole message, traceback tail,
    and the worker's log, found by `worker_log(worker id)` (each runner names its workers' logs:
    evalcore.runners.registry.worker_log; a Slurm job's message already carries its log's last lines)."""
    blocks = []
    for p in failed:
        log = worker_log(p.get("claimed_by"))
        lines = [f"partition {p['partition_id']}  ({p['status']}, {p['attempts']} tries, worker "
                 f"{p.get('claimed_by') or '-'})",
                 f"  {p.get('error_class') or '-'}: " + (p.get("error_message") or "").replace("\n", "\n  ")]
        tb = (p.get("error_traceback") or "").strip()
        if tb and tb not in (p.get("error_message") or ""):
            lines.append("  traceback (last lines):\n    " + tb.replace("\n", "\n    "))
        if log is not None:
            lines.append(f"  worker log: {log}" + ("" if log.exists() else " (not found)"))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


__all__ = ["run_state", "unscored", "error_details"]
