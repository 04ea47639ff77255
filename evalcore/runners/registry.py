"""The runners, by name: one static table of `RunnerSpec` records, the only place that knows
which runners exist and how they differ.

Design. The plan keeps the runner's name (`[run] runner`) and every `[run.<name>]` table as it
was written (`RunSettings.runner_settings`), unchecked: the plan sits below the runners and may
not import them. This module checks both, `check_plan(plan)`: the name must be a runner of the
table, and each table goes through its runner's settings function (unknown keys and wrong types
are `PlanError`s, exit 2, one line). The driver's `prepare` calls it first, so `evalcore eval`
and `evalcore resume` (with or without `--runner`) refuse a bad table before a run folder
exists or is rewritten. Everything the driver, the engine and the CLI used to decide by
comparing the runner's name with "local" or "slurm" is a field of its spec (`host_gpus`,
`on_host`, `off_host_reason`, `worker_prefix`, `log_name`); they read the field and never the
name. The engine, below the runners, receives the fields it needs as plain arguments.

Adding a runner: one module (or package) in evalcore/runners/ with its runner class and, if it
takes a `[run.<name>]` table, the function that checks it; one entry in `RUNNERS`; its tests.
Nothing else names it: `--runner` offers `names()`, errors list them.

No import-time side effects and no mutable state: the table is a read-only mapping of frozen
records; the runner class and the settings function are named as "module:attribute" and
imported only when used, so importing this module (the CLI does, for `--runner`) loads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import MappingProxyType
from typing import Any

from evalcore.errors import PlanError


@dataclass(frozen=True)
class RunnerSpec:
    name: str
    summary: str          # one line for --help
    runner: str           # "module:Class": Class(ctx, on_progress=...) with .run()
    settings: str | None  # "module:function" checking its [run.<name>] table; None: it takes none
    worker_prefix: str    # the worker ids its workers get start with this
    log_name: str         # a worker's log under <run>/logs/, "{id}" is the worker id
    host_gpus: bool       # the GPUs this host sees are the workers' GPUs (else the runner's nodes
    #                       decide: partitions keep their num_gpus, one worker unless asked)
    on_host: bool         # workers are processes the driver starts on this host: a loopback-only
    #                       network namespace applies, and the driver hands back a dead one's work
    off_host_reason: str = ""  # recorded when on_host is false and the run is offline

    def runner_class(self) -> type:
        return _attribute(self.runner)

    def check_settings(self, table: Mapping) -> Any:
        """Its `[run.<name>]` table, checked (PlanError on a bad one); the runner's settings object."""
        if self.settings is not None:
            return _attribute(self.settings)(table)
        if not isinstance(table, Mapping):
            raise PlanError(f"[run.{self.name}] must be a table")
        if table:
            raise PlanError(f"[run.{self.name}]: the {self.name} runner takes no settings, got "
                            f"{', '.join(sorted(table))}", hint=f"remove [run.{self.name}]")
        return None


def _attribute(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


RUNNERS: Mapping[str, RunnerSpec] = MappingProxyType({
    "local": RunnerSpec(
        name="local", summary="processes on this host", runner="evalcore.runners.local:LocalRunner",
        settings=None, worker_prefix="w", log_name="worker-{id}.log", host_gpus=True, on_host=True),
    "slurm": RunnerSpec(
        name="slurm", summary="sbatch jobs on a Slurm cluster (docs/slurm.md)",
        runner="evalcore.runners.slurm:SlurmRunner", settings="evalcore.runners.slurm_settings:slurm_settings",
        worker_prefix="slurm-", log_name="{id}.out", host_gpus=False, on_host=False,
        off_host_reason="Slurm workers start on the cluster's nodes, under the Python socket guard"),
})


def names() -> tuple[str, ...]:
    return tuple(RUNNERS)


def _listed() -> str:
    return " or ".join(RUNNERS)


def lookup(name: str) -> RunnerSpec:
    spec = RUNNERS.get(name)
    if spec is None:
        raise PlanError(f"unknown runner {name!r} ({_listed()})")
    return spec


def check_plan(plan) -> RunnerSpec:
    """The plan's runner, and every `[run.<name>]` table checked by its runner (the chosen
    runner's settings even without a table: its defaults must hold). Before any work starts."""
    spec = lookup(plan.run.runner)
    tables = plan.run.runner_settings
    for name, table in tables.items():
        if name not in RUNNERS:
            raise PlanError(f"[run.{name}]: no runner is called {name!r} ({_listed()})")
        RUNNERS[name].check_settings(table)
    if spec.name not in tables:
        spec.check_settings({})
    return spec


def runner_of_worker(worker_id: str | None) -> RunnerSpec | None:
    """The runner whose workers get ids like `worker_id` (the longest prefix that fits)."""
    fits = [s for s in RUNNERS.values() if worker_id and worker_id.startswith(s.worker_prefix)]
    return max(fits, key=lambda s: len(s.worker_prefix), default=None)


def worker_log(run_dir: Path, worker_id: str | None) -> Path | None:
    """The log of a worker (a local worker's logs/worker-<id>.log, a Slurm job's logs/slurm-<job>.out)."""
    spec = runner_of_worker(worker_id)
    if spec is None:
        return None
    return Path(run_dir) / "logs" / spec.log_name.format(id=worker_id)


__all__ = ["RunnerSpec", "RUNNERS", "names", "lookup", "check_plan", "runner_of_worker",
           "worker_log"]
