"""Task definitions: how a dataset row becomes a prompt, its choices or stop strings, its gold
answer and its metric. Pure functions over rows; no I/O, no heavy imports.

Built-in tasks follow lm-evaluation-harness 0.4.13's definitions where it has one (see
docs/crosscheck.md); names follow OpenCompass (`arc_easy_ppl`, `gsm8k_gen`, ...). A task's
`version` hashes its code and settings, so a changed prompt changes every key that depends on it.
"""

from __future__ import annotations

from evalcore.benchmarks.builtin import BUILTIN
from evalcore.benchmarks.definition import FIXED_ON_BUILTIN as _FIXED_ON_BUILTIN
from evalcore.benchmarks.definition import Task
from evalcore.benchmarks.engine import build_context, fewshot_rows, random_shots
from evalcore.errors import PlanError
from evalcore.plan.spec import DatasetSpec

__all__ = ["BUILTIN", "Task", "task_for", "build_context", "fewshot_rows", "random_shots"]


# -- the task a plan's dataset runs ----------------------------------------------------------------

def task_for(spec: DatasetSpec) -> Task:
    """The task a plan's dataset runs: a built-in one (with the plan's overrides), its own, or
    an lm-eval task file."""
    if spec.task == "custom":
        from evalcore.benchmarks.plan_sets import plan_task

        return plan_task(spec)
    if spec.task == "lmeval":
        from evalcore.benchmarks.taskfile import task_from_spec

        return task_from_spec(spec)
    from evalcore.benchmarks.registry import canonical

    base = BUILTIN.get(canonical(spec.task))
    if base is None:
        raise PlanError(f"no built-in task {spec.task!r}")
    where = f"dataset {spec.abbr} (built-in {spec.task})"
    for key in _FIXED_ON_BUILTIN:
        if getattr(spec, key) is not None:
            raise PlanError(f"{where}: '{key}' cannot be changed on a built-in benchmark",
                            hint="define your own dataset instead (path = ..., template = ..., see docs/plan.md), "
                                 "or leave the key out")
    overrides: dict = {}
    if spec.fewshot is not None:
        if spec.fewshot < 0:
            raise PlanError(f"{where}: 'fewshot' must be >= 0, got {spec.fewshot}")
        if spec.fewshot and not (spec.fewshot_split or base.fewshot_split):
            raise PlanError(f"{where}: has no few-shot split; set 'fewshot_split'")
        overrides["fewshot"] = spec.fewshot
    if spec.fewshot_split:
        overrides["fewshot_split"] = spec.fewshot_split
    if spec.max_out_len is not None:
        if base.mode != "gen":
            raise PlanError(f"{where}: 'max_out_len' applies to generation; {spec.task} scores choices")
        if spec.max_out_len < 1:
            raise PlanError(f"{where}: 'max_out_len' must be >= 1, got {spec.max_out_len}")
        overrides["max_out_len"] = spec.max_out_len
    if spec.stop is not None:
        if base.mode != "gen":
            raise PlanError(f"{where}: 'stop' applies to generation; {spec.task} scores choices")
        overrides["stop"] = tuple(spec.stop)
    return _replace(base, **overrides)


def _replace(task: Task, **kw) -> Task:
    from dataclasses import replace

    return replace(task, **kw) if kw else task
