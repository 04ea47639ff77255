"""A run's folder and what every process of the run reads from it: the plan, the artefacts the
preflight resolved, the tasks, and the partition keys.

    <work_dir>/<run_id>/run.json     plan + resolved artefacts (written once, atomically)
    <work_dir>/<run_id>/ledger.db    the task ledger (SQLite, WAL)
    <work_dir>/<run_id>/logs/        one log per worker
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evalcore.backends.checkpoint import tokenizer_hash
from evalcore.backends.model import ModelSpec
from evalcore.backends.registry import backend_kind
from evalcore.engine.partition import GEN_COST, Unit
from evalcore.errors import EvalcoreError, PlanError
from evalcore.plan.data import DataRef
from evalcore.plan.preflight import LocalModel, Resolved
from evalcore.plan.spec import Plan, plan_from_json, plan_to_json
from evalcore.plan.tasks import Task, task_for


def new_run_id(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)


@dataclass
class RunContext:
    run_id: str
    run_dir: Path
    plan: Plan
    resolved: Resolved
    security: dict = field(default_factory=dict)  # evalcore.engine.security.decide: code sandbox, offline enforcement

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / "ledger.db"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def tasks(self) -> dict[str, Task]:
        return {d.abbr: task_for(d) for d in self.plan.datasets}

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        doc = {"run_id": self.run_id, "plan": json.loads(plan_to_json(self.plan)),
               "resolved": _resolved_to_dict(self.resolved), "security": self.security,
               # each benchmark's definition: where it came from, its version, and the task-file
               # keys accepted without changing a score (metadata, should_decontaminate, ...)
               "benchmarks": {abbr: {"source": t.source, "version": t.version, "recorded": dict(t.recorded)}
                              for abbr, t in self.tasks().items()}}
        tmp = self.run_dir / ".run.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self.run_dir / "run.json")

    @classmethod
    def load(cls, run_dir: Path) -> RunContext:
        try:
            doc = json.loads((run_dir / "run.json").read_text())
        except FileNotFoundError:
            raise EvalcoreError(f"{run_dir} is not an evalcore run folder (no run.json)",
                                hint="give the folder or id that `evalcore eval` printed") from None
        except ValueError as exc:
            raise EvalcoreError(f"{run_dir}/run.json is damaged: {exc}") from None
        plan = plan_from_json(json.dumps(doc["plan"]))
        return cls(doc["run_id"], run_dir, plan, _resolved_from_dict(doc["resolved"]), doc.get("security", {}))


def _resolved_to_dict(r: Resolved) -> dict:
    def lm(m: LocalModel) -> dict:
        return {**asdict(m), "folder": str(m.folder)}

    def ref(d: DataRef) -> dict:
        return {"path": str(d.path), "sha256": d.sha256, "source": d.source, "parts": [list(x) for x in d.parts]}

    return {"models": {k: lm(v) for k, v in r.models.items()},
            "tokenizers": {k: lm(v) for k, v in r.tokenizers.items()},
            "datasets": {k: ref(v) for k, v in r.datasets.items()},
            "fewshot": {k: ref(v) for k, v in r.fewshot.items()}}


def _resolved_from_dict(d: dict) -> Resolved:
    def lm(x: dict) -> LocalModel:
        return LocalModel(x["load_path"], x["revision"], Path(x["folder"]), x["fingerprint"], x["trust_remote_code"])

    def ref(x: dict) -> DataRef:
        return DataRef(Path(x["path"]), x["sha256"], x["source"], tuple(tuple(p) for p in x.get("parts", ())))

    return Resolved({k: lm(v) for k, v in d["models"].items()}, {k: lm(v) for k, v in d["tokenizers"].items()},
                    {k: ref(v) for k, v in d["datasets"].items()}, {k: ref(v) for k, v in d["fewshot"].items()})


def model_key(m: ModelSpec, lm: LocalModel, tok: LocalModel) -> dict:
    """The part of every partition key that the model decides: its files as the preflight found
    them (`lm`, `tok`) and every field of its description that changes answers. These fields and
    their text are what old runs recorded: a change here makes every resume of them refused."""
    kind = backend_kind(m.backend)
    return {
        "model": lm.fingerprint, "model_path": lm.load_path, "backend": m.backend,
        "dtype": m.dtype, "tokenizer": tokenizer_hash(tok.folder) if kind.reads_files else None,
        "chat_template": m.chat_template, "max_seq_len": m.max_seq_len, "batch_padding": m.batch_padding,
        "model_kwargs": {k: str(v) for k, v in sorted(m.model_kwargs.items()) if k not in ("device_map",)},
        "tokenizer_kwargs": {k: str(v) for k, v in sorted(m.tokenizer_kwargs.items())},
        "versions": kind.versions(),  # a resume after an upgrade is refused, never mixed
    }


def units(ctx: RunContext, counts: dict[str, int]) -> list[Unit]:
    """One Unit per model x dataset, keyed by everything its answers depend on."""
    tasks = ctx.tasks()
    out = []
    for m in ctx.plan.models:
        lm = ctx.resolved.models[m.name]
        key_of_model = model_key(m, lm, ctx.resolved.tokenizers.get(m.name, lm))
        for d in ctx.plan.datasets:
            task = tasks[d.abbr]
            limit = d.limit if d.limit is not None else ctx.plan.run.limit
            n = counts[d.abbr] if limit is None else min(limit, counts[d.abbr])
            fs = ctx.resolved.fewshot.get(d.abbr)
            key = {**key_of_model, "task": task.name, "task_version": task.version,
                   "data": ctx.resolved.datasets[d.abbr].sha256, "fewshot_data": fs.sha256 if fs else None,
                   "max_out_len": effective_max_out_len(m, task) if task.mode == "gen" else None,
                   "code_execution": d.allow_code_execution}
            cost = GEN_COST if task.mode == "gen" else 4.0  # 4 choices assumed: counting them would read every row
            out.append(Unit(m.name, d.abbr, n, cost, m.num_gpus, key))
    return out


def effective_max_out_len(model, task: Task) -> int:
    """The model's max_out_len (plan or --max-out-len) when given, else the dataset's own, else 256."""
    from evalcore.plan.spec import DEFAULT_MAX_OUT_LEN

    if model.max_out_len is not None:
        return model.max_out_len
    return task.max_out_len or DEFAULT_MAX_OUT_LEN


def check_work_dir(work_dir: str) -> Path:
    """The work dir must be a folder this process can write (or be creatable in one): checked
    before anything else, so a bad one costs one line (exit 2), not a traceback after preflight."""
    p = Path(work_dir).expanduser()
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        where = "is a file" if q == p else f"cannot be made: {q} is a file"
        raise PlanError(f"work_dir {p} {where}, not a folder", hint="give --work-dir a folder (new or existing)")
    if not os.access(q, os.W_OK | os.X_OK):
        what = "is not writable" if q == p else f"cannot be made: {q} is not writable"
        raise PlanError(f"work_dir {p} {what} by this user", hint="choose a folder you can write (--work-dir)")
    return p


def check_run_dir(work_dir: str, run_id: str) -> Path:
    if "/" in run_id or run_id in ("", ".", ".."):
        raise PlanError(f"invalid run id {run_id!r}")
    return Path(work_dir).expanduser() / run_id
