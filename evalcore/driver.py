"""The driver: plan -> preflight -> partitions in the ledger -> runner -> results -> summary.
`resume` checks that nothing the answers depend on changed, requeues what failed or never
finished, and runs again; finished samples are reused."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import EvalcoreError, PlanError
from .plan import Plan, plan_to_json, validate

EXIT_OK, EXIT_PARTIAL = 0, 1


class ResumeRefused(EvalcoreError):
    exit_code = 3
    default_hint = "start a new run for the changed plan or artefacts: evalcore eval ..."


@dataclass
class Outcome:
    run_dir: Path
    run_id: str
    failed: list[dict]

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.failed else EXIT_OK


def prepare(plan: Plan, *, run_id: str | None = None, log: Callable[[str], None] = print):
    """Preflight and partitions for a new run; returns (context, partition rows)."""
    from .offline import go_offline

    validate(plan)
    if plan.run.offline:
        go_offline()
    from .benchmarks.validate import dry_run
    from .gpus import discover_gpus
    from .ledger import PartitionRow
    from .partition import split
    from .preflight import resolve_plan
    from .runctx import RunContext, check_run_dir, new_run_id, units

    devices = discover_gpus(os.environ)
    if devices and plan.run.runner == "local":  # under Slurm the cluster's nodes decide
        for m in plan.models:
            if m.num_gpus > len(devices):
                raise PlanError(f"model {m.name} needs {m.num_gpus} GPUs but this host has {len(devices)} "
                                f"({','.join(devices)}); it could never start",
                                hint="lower --hf-num-gpus, or run on a larger machine")
    tasks = {d.abbr: _task(d) for d in plan.datasets}
    for d in plan.datasets:
        if tasks[d.abbr].needs_execution and not d.allow_code_execution:
            raise PlanError(f"dataset {d.abbr} executes generated code; set allow_code_execution = true "
                            "for it in the plan to allow that (sandboxed subprocess)")
    resolved = resolve_plan(plan, tasks)
    counts = dry_run(plan, tasks, resolved)  # every selected row becomes its requests, before any model loads
    run_id = run_id or new_run_id()
    ctx = RunContext(run_id, check_run_dir(plan.run.work_dir, run_id), plan, resolved)
    parts = split(units(ctx, counts), plan.run.max_partition_size)
    rows = [PartitionRow(p.partition_id, p.model, p.dataset, p.key_hash, p.key_json, "{}", p.start, p.end, p.cost,
                         p.n_gpus if (devices or plan.run.runner == "slurm") else 0, plan.run.max_attempts)
            for p in parts]
    return ctx, rows


def _task(d):
    from .tasks import task_for

    return task_for(d)


def start(plan: Plan, argv: list[str], *, log: Callable[[str], None] = print):
    from .ledger import Ledger

    ctx, rows = prepare(plan, log=log)
    ctx.save()
    with Ledger(ctx.ledger_path, create=True) as ledger:
        ledger.create_run(ctx.run_id, str(ctx.run_dir.parent), plan_to_json(plan), argv, rows, now=time.time())
    return ctx


def check_resume(run_dir: Path, log: Callable[[str], None] = print):
    """Reload a run; refuse if a partition's key changed (model, tokenizer, prompt, data, ...)."""
    from .ledger import Ledger
    from .partition import diff_keys
    from .runctx import RunContext

    old = RunContext.load(run_dir)
    ctx, rows = prepare(old.plan, run_id=old.run_id, log=log)
    ctx.run_dir = run_dir
    with Ledger(ctx.ledger_path, create=False) as ledger:
        recorded = {p["partition_id"]: p for p in ledger.partitions(ctx.run_id)}
    now_ids = {r.partition_id: r for r in rows}
    problems = []
    if set(recorded) != set(now_ids):
        gone, new = sorted(set(recorded) - set(now_ids)), sorted(set(now_ids) - set(recorded))
        problems.append(f"the partitions changed ({len(gone)} gone, {len(new)} new): the data or limits changed")
    for pid, r in sorted(now_ids.items()):
        old_p = recorded.get(pid)
        if old_p is not None and old_p["key_hash"] != r.key_hash:
            problems.append(f"{pid}: " + "; ".join(diff_keys(old_p["key_json"], r.key_json)))
    if problems:
        raise ResumeRefused(f"cannot resume {ctx.run_id}: what its answers depend on changed: "
                            + " | ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    ctx.save()
    return ctx


def execute(ctx, *, on_progress=None) -> Outcome:
    """Run the workers until every partition is done or failed; then score and record results."""
    from .ledger import Ledger

    if ctx.plan.run.runner == "slurm":
        from .runners.slurm import SlurmRunner as Runner
    else:
        from .runners.local import LocalRunner as Runner
    runner = Runner(ctx, on_progress=on_progress)
    runner.run()
    with Ledger(ctx.ledger_path, create=False) as ledger:
        finalize(ctx, ledger)
        failed = [p for p in ledger.partitions(ctx.run_id) if p["status"] != "done"]
        ledger.set_run_status(ctx.run_id, "failed" if failed else "done", now=time.time())
    return Outcome(ctx.run_dir, ctx.run_id, failed)


def finalize(ctx, ledger) -> None:
    """Aggregate the samples of every model x dataset whose partitions are all done."""
    from .benchmarks.suite_scoring import group_rows
    from .scoring import aggregate

    parts = ledger.partitions(ctx.run_id)
    complete: dict[tuple[str, str], bool] = {}
    for p in parts:
        key = (p["model_key"], p["dataset_key"])
        complete[key] = complete.get(key, True) and p["status"] == "done"
    by_unit: dict[tuple[str, str], list[dict]] = {}
    owner = {p["partition_id"]: (p["model_key"], p["dataset_key"]) for p in parts}
    for pid, _idx, out in ledger.samples(ctx.run_id):
        key = owner[pid]
        if complete.get(key):
            by_unit.setdefault(key, []).append(json.loads(out))
    rows = []
    for (model, dataset), samples in by_unit.items():
        aggregated = aggregate(samples)
        for metric, agg in aggregated.items():
            rows.append({"model_key": model, "dataset_key": dataset, "metric": metric, "value": agg["value"],
                         "stderr": agg["stderr"], "n": agg["n"]})
            if "macro" in agg:
                rows.append({"model_key": model, "dataset_key": dataset, "metric": f"{metric}_macro",
                             "value": agg["macro"], "stderr": None, "n": agg["n"]})
        rows += group_rows(model, dataset, aggregated)  # per subject/task and per category: "acc/stem"
    ledger.put_results(ctx.run_id, rows)


def find_run(ref: str | None, work_dir: str = "outputs") -> Path:
    """RUN is a run folder, or a run id under the work dir; none means the newest run there."""
    if ref:
        p = Path(ref).expanduser()
        if (p / "run.json").is_file():
            return p
        q = Path(work_dir).expanduser() / ref
        if (q / "run.json").is_file():
            return q
        raise EvalcoreError(f"no run {ref!r} (neither a run folder nor a run id under {work_dir})",
                            hint="give the folder or id that `evalcore eval` printed, or --work-dir")
    root = Path(work_dir).expanduser()
    runs = sorted((p for p in root.glob("*/run.json")), key=lambda p: p.parent.name) if root.is_dir() else []
    if not runs:
        raise EvalcoreError(f"no run in {root}", hint="start one with `evalcore eval`, or pass --work-dir")
    return runs[-1].parent


def resume_command(run_dir: Path) -> str:
    return f"evalcore resume {run_dir}"


__all__ = ["start", "execute", "check_resume", "find_run", "Outcome"]
