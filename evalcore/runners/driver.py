"""The driver: plan -> preflight -> partitions in the ledger -> runner -> results -> summary.
`resume` checks that nothing the answers depend on changed, requeues what failed or never
finished, and runs again; finished samples are reused."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cachekit.errors import EXIT_FAILED, EXIT_OK
from evalcore.errors import EvalcoreError, PlanError, ResumeRefused
from evalcore.plan.spec import Plan, default_workers, plan_to_json, replace, validate
from evalcore.runners.registry import check_plan, lookup, runner_of_worker


@dataclass
class Outcome:
    run_dir: Path
    run_id: str
    failed: list[dict]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK


def prepare(plan: Plan, *, run_id: str | None = None, log: Callable[[str], None] = print):
    """Preflight and partitions for a new run; returns (context, partition rows)."""
    from evalcore.benchmarks.taskfile import bind
    from evalcore.isolation.offline import go_offline

    runner = check_plan(validate(plan))  # [run.<runner>] tables too: bad keys fail before a run folder exists
    plan = bind(plan)  # lm-eval task names -> their files and data (groups expanded)
    validate(plan)
    if run_id is None:  # a new run (resume writes into the run folder it was given)
        from evalcore.engine.runctx import check_work_dir

        check_work_dir(plan.run.work_dir)
    if plan.run.offline:
        go_offline()
    from evalcore.engine.gpus import discover_gpus
    from evalcore.engine.ledger import PartitionRow
    from evalcore.engine.partition import split
    from evalcore.engine.runctx import RunContext, check_run_dir, new_run_id, units
    from evalcore.plan.dry_run import dry_run
    from evalcore.plan.preflight import resolve_plan

    devices = discover_gpus(os.environ)
    if plan.run.max_num_workers is None:  # resolved once, recorded in run.json (resume keeps it)
        workers_gpus = len(devices) if runner.host_gpus else 0
        plan = replace(plan, run=replace(plan.run, max_num_workers=default_workers(plan, workers_gpus)))
    if not plan.run.offline:
        from evalcore.plan.hubcheck import check_hub_reachable

        check_hub_reachable(plan)
    if devices and runner.host_gpus:  # else (Slurm) the runner's nodes decide
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
    from evalcore.engine.security import decide, describe

    # refuses code execution without an OS sandbox (unless opted in)
    security = decide(plan, tasks, workers_off_host=None if runner.on_host else runner.off_host_reason)
    for line in describe(security):
        log(line)
    resolved = resolve_plan(plan, tasks)
    counts = dry_run(plan, tasks, resolved)  # every selected row becomes its requests, before any model loads
    run_id = run_id or new_run_id()
    ctx = RunContext(run_id, check_run_dir(plan.run.work_dir, run_id), plan, resolved, security)
    parts = split(units(ctx, counts), plan.run.max_partition_size)
    spec = _settings_json(ctx, len(devices), runner.host_gpus)
    rows = [PartitionRow(p.partition_id, p.model, p.dataset, p.key_hash, p.key_json, spec[(p.model, p.dataset)],
                         p.start, p.end, p.cost,
                         p.n_gpus if (devices or not runner.host_gpus) else 0, plan.run.max_attempts)
            for p in parts]
    return ctx, rows


def _settings_json(ctx, n_devices: int, host_gpus: bool) -> dict[tuple[str, str], str]:
    """The effective settings of every model x dataset, as recorded with its partitions."""
    from evalcore.engine.runctx import effective_max_out_len
    from evalcore.engine.settings import effective_settings

    tasks = ctx.tasks()
    out = {}
    for m in ctx.plan.models:
        for d in ctx.plan.datasets:
            t = tasks[d.abbr]
            out[(m.name, d.abbr)] = json.dumps(effective_settings(
                m, d, t, max_out_len=effective_max_out_len(m, t), limit=d.limit if d.limit is not None
                else ctx.plan.run.limit, n_devices=n_devices, host_gpus=host_gpus,
                workers_per_gpu=ctx.plan.run.max_workers_per_gpu), sort_keys=True)
    return out


def _task(d):
    from evalcore.plan.tasks import task_for

    return task_for(d)


def start(plan: Plan, argv: list[str], *, log: Callable[[str], None] = print):
    from evalcore.engine.ledger import Ledger

    ctx, rows = prepare(plan, log=log)
    said = set()
    for r in rows:  # settings that will not be used, said plainly before the run (also in the report)
        for note in json.loads(r.spec_json).get("notes", []):
            if (r.model_key, note) not in said:
                said.add((r.model_key, note))
                log(f"note: {r.model_key} x {r.dataset_key}: {note}")
    ctx.save()
    with Ledger(ctx.ledger_path, create=True) as ledger:
        ledger.create_run(ctx.run_id, str(ctx.run_dir.parent), plan_to_json(ctx.plan), argv, rows, now=time.time())
    return ctx


def check_resume(run_dir: Path, log: Callable[[str], None] = print, runner: str | None = None):
    """Reload a run; refuse if a partition's key changed (model, tokenizer, prompt, data, ...).
    `runner` (resume --runner) continues the run with the other runner; it is recorded."""
    from evalcore.engine.ledger import Ledger
    from evalcore.engine.partition import diff_keys
    from evalcore.engine.runctx import RunContext

    old = RunContext.load(run_dir)
    with Ledger(old.ledger_path, create=False, run_id=old.run_id) as ledger:  # checked before any work
        recorded = {p["partition_id"]: p for p in ledger.partitions(old.run_id)}
    plan = old.plan if runner is None else replace(old.plan, run=replace(old.plan.run, runner=runner))
    ctx, rows = prepare(plan, run_id=old.run_id, log=log)
    ctx.run_dir = run_dir
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
    from evalcore.engine.ledger import Ledger

    runner = lookup(ctx.plan.run.runner).runner_class()(ctx, on_progress=on_progress)
    previous = _sigterm_interrupts()
    try:
        runner.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runner stopped its workers at a batch boundary
        with Ledger(ctx.ledger_path, create=False, run_id=ctx.run_id) as ledger:
            hand_back_dead(ledger, ctx.run_id)
            ledger.set_run_status(ctx.run_id, "interrupted", now=time.time())
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    with Ledger(ctx.ledger_path, create=False, run_id=ctx.run_id) as ledger:
        finalize(ctx, ledger)
        failed = [p for p in ledger.partitions(ctx.run_id) if p["status"] != "done"]
        ledger.set_run_status(ctx.run_id, "failed" if failed else "done", now=time.time())
    return Outcome(ctx.run_dir, ctx.run_id, failed)


def _sigterm_interrupts():
    """SIGTERM (kill, a scheduler's time limit) stops a run the way Ctrl-C does."""
    def on_term(*_):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        return None


def hand_back_dead(ledger, run_id: str) -> int:
    """Partitions still 'running' whose local worker process on this host is gone go back to pending
    at once (no wait for their lease), without using up an attempt. Called by a driver that holds the
    run's lock, so no other driver's worker is affected."""
    host, n = socket.gethostname(), 0
    for p in ledger.partitions(run_id):
        spec = runner_of_worker(p["claimed_by"])
        if spec is not None and not spec.on_host:  # Slurm jobs: their runner hands those back
            continue
        if p["status"] == "running" and p["host"] == host and p["claim_token"] and not _alive(p["pid"]):
            n += bool(ledger.release(run_id, p["partition_id"], p["claim_token"], now=time.time()))
    return n


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def finalize(ctx, ledger) -> None:
    """Aggregate the samples of every model x dataset whose partitions are all done."""
    from evalcore.benchmarks.scores import run_result_rows
    from evalcore.engine.samples import by_unit

    units = by_unit(ledger, ctx.run_id)
    ledger.put_results(ctx.run_id, run_result_rows(ctx.plan, units), now=time.time())


def find_run(ref: str | None, work_dir: str = "outputs") -> Path:
    """RUN is a run folder, a run id under the work dir, or a work dir (its newest run); none
    means the newest run under --work-dir."""
    root = Path(work_dir).expanduser()
    if ref:
        p = Path(ref).expanduser()
        if (p / "run.json").is_file():
            return p
        q = root / ref
        if (q / "run.json").is_file():
            return q
        if p.is_dir() and any(p.glob("*/run.json")):
            root = p
        else:
            raise EvalcoreError(f"no run {ref!r} (neither a run folder, a run id under {work_dir}, nor a work dir)",
                                hint="give the folder or id that `evalcore eval` printed, or --work-dir")
    runs = sorted((p for p in root.glob("*/run.json")), key=lambda p: p.parent.name) if root.is_dir() else []
    if not runs:
        raise EvalcoreError(f"no run in {root}", hint="start one with `evalcore eval`, or pass --work-dir")
    return runs[-1].parent


def resume_command(run_dir: Path) -> str:
    return f"evalcore resume {run_dir}"


__all__ = ["start", "execute", "check_resume", "find_run", "Outcome"]
