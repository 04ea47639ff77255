"""The plan's `[run.slurm]` table, checked: what the Slurm runner is told to do. Apart from the
runner so that the runner registry (evalcore/runners/registry.py) checks a plan's table before a
run starts without importing the runner (and what it imports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from evalcore.engine.spool import DEFAULT_TIMEOUT_S

from ..errors import PlanError


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    qos: str | None = None
    time: str | None = None
    extra_args: tuple[str, ...] = ()
    max_retries: int = 2        # abnormal job ends in a row, with no progress, before giving up
    poll_seconds: float = 2.0   # how often squeue is asked about the jobs
    spool_timeout: float = DEFAULT_TIMEOUT_S  # a job stops after this long without its driver


SETTING_KEYS = ("partition", "qos", "time", "extra_args", "max_retries", "poll_seconds", "spool_timeout")


def slurm_settings(table: Mapping) -> SlurmSettings:
    """The plan's `[run.slurm]` table, checked: unknown keys and wrong types are PlanErrors."""
    where = "[run.slurm]"
    if not isinstance(table, Mapping):
        raise PlanError(f"{where} must be a table")
    unknown = sorted(set(table) - set(SETTING_KEYS))
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}", hint=f"allowed: {', '.join(SETTING_KEYS)}")
    out: dict = {}
    for k in ("partition", "qos"):
        if k in table:
            if not isinstance(table[k], str) or not table[k]:
                raise PlanError(f"{where}: '{k}' must be a non-empty string, got {table[k]!r}")
            out[k] = table[k]
    if "time" in table:
        t = table["time"]
        if isinstance(t, bool) or not isinstance(t, (str, int)) or (isinstance(t, int) and t <= 0) or t == "":
            raise PlanError(f"{where}: 'time' must be a Slurm time limit (\"4:00:00\", \"1-00:00:00\") or "
                            f"minutes, got {t!r}")
        out["time"] = str(t)
    if "extra_args" in table:
        xs = table["extra_args"]
        if isinstance(xs, str) or not isinstance(xs, (list, tuple)) or not all(isinstance(x, str) for x in xs):
            raise PlanError(f"{where}: 'extra_args' must be a list of strings (sbatch options), got {xs!r}",
                            hint='e.g. extra_args = ["--account=llm", "--mem=64G"]')
        out["extra_args"] = tuple(xs)
    if "max_retries" in table:
        v = table["max_retries"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise PlanError(f"{where}: 'max_retries' must be an integer >= 0, got {v!r}")
        out["max_retries"] = v
    for k in ("poll_seconds", "spool_timeout"):
        if k in table:
            v = table[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise PlanError(f"{where}: '{k}' must be a positive number of seconds, got {v!r}")
            out[k] = float(v)
    return SlurmSettings(**out)
