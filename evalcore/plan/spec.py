# Over 400 lines on purpose: the plan format is one schema (file keys, flags, defaults and their
# checks side by side, as docs/plan.md lists them); split it only along a seam of that format.
"""The evaluation plan: a TOML file and OpenCompass-style flags -> frozen records. Pure.

Precedence: command-line flags > plan file > defaults. Unknown keys are errors, never ignored.
See docs/plan.md for the format, with complete examples.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType

from evalcore.backends.model import ModelSpec, one_trust_setting, parse_dtype
from evalcore.backends.registry import backend_kind
from evalcore.benchmarks.catalog import lookup
from evalcore.errors import PlanError


def _empty() -> Mapping:
    return MappingProxyType({})


DEFAULT_MAX_OUT_LEN = 256  # a generation dataset without its own value and no model max_out_len
# The smallest value each numeric setting takes (a value below it is refused, 0 included).
MINIMUM = MappingProxyType({
    "max_num_workers": 1, "max_workers_per_gpu": 1, "max_partition_size": 1, "limit": 1, "lease_seconds": 1.0,
    "max_attempts": 1, "threads": 1, "max_out_len": 1, "max_seq_len": 2, "num_gpus": 0, "fewshot": 0,
})


@dataclass(frozen=True)
class DatasetSpec:
    abbr: str
    task: str  # a built-in task name (arc_easy_ppl, ...), "custom" (the plan's own), or "lmeval" (a task file)
    path: str  # hub dataset repo id, or a local .jsonl/.json/.csv/.parquet file
    config: str | None = None
    split: str = "test"
    revision: str | None = None
    limit: int | None = None
    # user-defined sets (task = "custom"); None = not given (refused on a built-in, see tasks.task_for):
    mode: str | None = None  # "ll" (log-likelihood over choices) or "gen" (generation)
    template: str | None = None  # Jinja2 template over the row's fields (lm-eval's environment)
    choices: tuple[str, ...] | str | None = None  # a list of templates, a list field, or a template giving a list
    label: str | None = None  # field holding the gold: index or the choice's text (see label_map)
    label_map: Mapping | None = None  # raw label -> index or choice text ("1" = 0, true = 1, ...)
    gold: str | int | None = None  # instead of label: a constant index, or a template (digits = an index)
    contexts: tuple[str, ...] | str | None = None  # multiple-input form: one context per choice ...
    continuation: str | None = None  # ... and the continuation scored after each
    description: str | None = None  # template put before the few-shot examples
    target_delimiter: str | None = None  # default " "
    fewshot: int | None = None  # None = the benchmark's own; 0 is a value
    fewshot_split: str | None = None
    fewshot_delimiter: str | None = None  # default "\n\n"
    stop: tuple[str, ...] | None = None
    metric: str | None = None  # acc | exact_match | gsm8k | bbh
    max_out_len: int | None = None
    allow_code_execution: bool = False
    task_file: str | None = None  # task = "lmeval": the lm-eval YAML (found in include_path)
    groups: Mapping = field(default_factory=_empty)  # lm-eval group name -> its aggregate_metric_list
    data_files: Mapping = field(default_factory=_empty)  # task files with local data: split -> file


@dataclass(frozen=True)
class RunSettings:
    work_dir: str = "outputs"
    max_num_workers: int | None = None  # None: GPUs x max_workers_per_gpu / num_gpus (one on a CPU host)
    max_workers_per_gpu: int = 1
    max_partition_size: int = 40000
    limit: int | None = None
    offline: bool = True
    runner: str = "local"
    lease_seconds: float = 60.0
    max_attempts: int = 3
    threads: int | None = None
    include_path: tuple[str, ...] = ()  # folders of lm-eval task files ([[datasets]] task = "NAME", --tasks)
    reload_per_partition: bool = False  # OpenCompass's policy (a fresh model for every task): for comparisons
    unsafe_allow_weak_sandbox: bool = False  # run generated code under the Python guard where no OS sandbox exists
    # each [run.<runner>] table as written (name -> table), checked by that runner: evalcore.runners.registry
    runner_settings: Mapping = field(default_factory=_empty)


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    run: RunSettings = field(default_factory=RunSettings)


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


MODEL_KEYS = _names(ModelSpec) | {"hf_path"}
DATASET_KEYS = (_names(DatasetSpec) - {"task", "task_file", "groups", "data_files"}) | {"name", "task"}
RUN_KEYS = _names(RunSettings) - {"runner_settings"}  # written as [run.<runner>] tables instead


def _check_keys(d: Mapping, allowed: set[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise PlanError(f"{where} must be a table")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}",
                        hint=f"allowed: {', '.join(sorted(allowed))}")


def _typed(cls, values: Mapping, where: str):
    """Build a dataclass, checking simple types so a typo'd value fails with its key named."""
    out = {}
    hints = {f.name: f.type for f in fields(cls)}
    for k, v in values.items():
        t = str(hints[k])
        if t == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            raise PlanError(f"{where}: '{k}' must be an integer, got {v!r}")
        if t == "bool" and not isinstance(v, bool):
            raise PlanError(f"{where}: '{k}' must be true or false, got {v!r}")
        if t.startswith("int | None") and v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise PlanError(f"{where}: '{k}' must be an integer, got {v!r}")
        if t == "float":
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise PlanError(f"{where}: '{k}' must be a number, got {v!r}")
            v = float(v)
        if k in MINIMUM and isinstance(v, (int, float)) and not isinstance(v, bool) and v < MINIMUM[k]:
            raise PlanError(f"{where}: '{k}' must be >= {MINIMUM[k]}, got {v!r}")
        if t == "str" and not isinstance(v, str):
            raise PlanError(f"{where}: '{k}' must be a string, got {v!r}")
        if t == "Mapping":
            if not isinstance(v, Mapping):
                raise PlanError(f"{where}: '{k}' must be a table of key = value, got {v!r}")
            v = MappingProxyType(dict(v))
        if t == "tuple[str, ...]" and not isinstance(v, (list, tuple)):
            raise PlanError(f"{where}: '{k}' must be a list of strings, got {v!r}")
        if t.startswith("tuple") and isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                raise PlanError(f"{where}: '{k}' must be a list of strings, got {v!r}")
            v = tuple(v)
        if k == "label_map":
            if not isinstance(v, Mapping) or not v:
                raise PlanError(f"{where}: 'label_map' must be a table of raw label = index or choice text, got {v!r}")
            v = MappingProxyType(dict(v))
        if k == "gold" and (isinstance(v, bool) or not isinstance(v, (int, str))):
            raise PlanError(f"{where}: 'gold' must be an index or a template, got {v!r}")
        out[k] = v
    try:
        obj = cls(**out)
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None
    return obj


def _model(d: Mapping, where: str) -> ModelSpec:
    _check_keys(d, MODEL_KEYS, where)
    d = dict(d)
    if "hf_path" in d:
        d["path"] = d.pop("hf_path")
    if "path" not in d:
        raise PlanError(f"{where} has no 'path' (a hub repo id or a local folder)")
    d = one_trust_setting(d, where)
    m = _typed(ModelSpec, d, where)
    if m.batch_size != "auto" and (not isinstance(m.batch_size, int) or isinstance(m.batch_size, bool)
                                   or m.batch_size < 1):
        raise PlanError(f"{where}: 'batch_size' must be a positive integer or \"auto\"")
    kind = backend_kind(m.backend, where)
    parse_dtype(m.model_kwargs, where)
    kind.check_options(m.backend_options, where)
    for key, path, rev in (("revision", m.path, m.revision),
                           ("tokenizer_revision", m.tokenizer_path or m.path, m.tokenizer_revision)):
        if rev and kind.reads_files and is_local(path):
            raise PlanError(f"{where}: '{key}' = {rev!r} names a hub revision, but {path} is a local folder",
                            hint="drop the revision (a local folder has one version), or give a hub repo id")
    return m


def _dataset(d: Mapping, where: str) -> DatasetSpec:
    _check_keys(d, DATASET_KEYS, where)
    d = dict(d)
    name = d.pop("name", None)
    task_name = d.pop("task", None)
    if task_name is not None:  # an lm-eval task file, found in [run] include_path (see benchmarks.taskfile)
        if name is not None or "path" in d:
            raise PlanError(f"{where}: 'task' (an lm-eval task file) goes without 'name' or 'path'")
        if not isinstance(task_name, str) or not task_name:
            raise PlanError(f"{where}: 'task' must be an lm-eval task name")
        return _typed(DatasetSpec, {"abbr": task_name, "task": "lmeval", "path": "", **d}, where)
    if name is not None and "path" not in d:
        ref = lookup(name)
        base = {"abbr": name, "task": name, "path": ref.repo_id, "config": ref.config, "split": ref.split}
        if ref.fewshot_split:
            base["fewshot_split"] = ref.fewshot_split
        return _typed(DatasetSpec, {**base, **d}, where)
    if "path" not in d:
        raise PlanError(f"{where} needs 'name' (a built-in dataset), 'path' (your own data) or 'task' (an lm-eval task file)")
    d.setdefault("abbr", name or Path(d["path"]).stem)
    spec = _typed(DatasetSpec, {"task": "custom", **d}, where)
    if spec.mode not in ("ll", "gen"):
        raise PlanError(f"{where}: a user-defined dataset needs mode = \"ll\" or \"gen\"")
    if not spec.template and spec.contexts is None:
        raise PlanError(f"{where}: a user-defined dataset needs a 'template' (or 'contexts', one per choice)")
    if spec.mode == "ll" and not spec.choices and spec.contexts is None:
        raise PlanError(f"{where}: mode \"ll\" needs 'choices'")
    if spec.label is None and spec.gold is None:
        raise PlanError(f"{where}: a user-defined dataset needs 'label' (the field with the gold answer) or 'gold'")
    return spec


def _check_dataset_names(entries) -> None:
    """Every unknown built-in name at once, each with its closest built-in."""
    from evalcore.benchmarks.registry import check_names

    check_names([d["name"] for d in entries if isinstance(d, Mapping) and isinstance(d.get("name"), str)
                 and "path" not in d and "task" not in d])


def _runner_tables(run: Mapping) -> tuple[Mapping, dict]:
    """[run] apart from its [run.<runner>] tables (a table under a key that is no setting), and
    those tables by name: the plan does not know the runners; their registry checks the names."""
    if not isinstance(run, Mapping):
        return run, {}
    tables = {k: MappingProxyType(dict(v)) for k, v in run.items() if k not in RUN_KEYS and isinstance(v, Mapping)}
    return {k: v for k, v in run.items() if k not in tables}, tables


def parse_plan(doc: Mapping, where: str = "plan") -> Plan:
    _check_keys(doc, {"models", "datasets", "run"}, where)
    run_doc, tables = _runner_tables(doc.get("run", {}))
    _check_keys(run_doc, RUN_KEYS, f"{where}: [run]")
    run = _typed(RunSettings, {**run_doc, "runner_settings": tables}, f"{where}: [run]")
    models = tuple(_model(m, f"{where}: models[{i}]") for i, m in enumerate(doc.get("models", [])))
    _check_dataset_names(doc.get("datasets", []))
    datasets = tuple(_dataset(d, f"{where}: datasets[{i}]") for i, d in enumerate(doc.get("datasets", [])))
    return Plan(models, datasets, run)


def load_plan(path: str | os.PathLike) -> Plan:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {p} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan file {p} is not valid TOML: {exc}") from None
    return _relative_to(parse_plan(doc, str(p)), p.resolve().parent)


def _relative_to(plan: Plan, base: Path) -> Plan:
    """Local model folders and data files named relative to the plan file are found from there."""

    def fix(path: str | None) -> str | None:
        if not path or Path(path).is_absolute() or path.startswith("~"):
            return path
        candidate = base / path
        return str(candidate) if (path.startswith(".") or candidate.exists()) else path

    models = tuple(replace(m, path=fix(m.path), tokenizer_path=fix(m.tokenizer_path)) for m in plan.models)
    datasets = tuple(replace(d, path=fix(d.path)) if d.task != "lmeval" else d for d in plan.datasets)
    run = replace(plan.run, include_path=tuple(str(base / p) if not Path(p).expanduser().is_absolute() else p
                                               for p in plan.run.include_path))
    return Plan(models, datasets, run)


def parse_kwargs(items: tuple[str, ...] | list[str], what: str) -> dict:
    """OpenCompass-style `k=v` pairs: `device_map='auto' trust_remote_code=True max_len=8`."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PlanError(f"{what}: expected key=value, got {item!r}")
        out[key.strip()] = _literal(raw.strip())
    return out


def _literal(raw: str):
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def with_overrides(plan: Plan, *, model: Mapping | None = None, model_overrides: Mapping | None = None,
                   datasets: list[str] | None = None, run: Mapping | None = None,
                   tasks: list[str] | None = None) -> Plan:
    """Apply command-line flags: `model` (from --hf-path ...) replaces the plan's models;
    `model_overrides` (--batch-size, --max-out-len, ...) apply to every model; `datasets`
    (--datasets NAME...) replaces the datasets; `run` overrides [run] settings."""
    models = plan.models
    if model:
        models = (_model(model, "command line"),)
    if model_overrides:
        _check_keys(model_overrides, MODEL_KEYS, "command line")
        flags = one_trust_setting(dict(model_overrides), "command line")
        models = tuple(_model(_merge_model(_as_dict(m), flags), "command line") for m in models)
    ds = plan.datasets
    if datasets:
        _check_dataset_names([{"name": n} for n in datasets])
        ds = tuple(_dataset({"name": n}, f"--datasets {n}") for n in datasets)
    if tasks:  # --tasks NAME...: lm-eval task files (with --datasets, both run)
        ds = (ds if datasets else ()) + tuple(_dataset({"task": n}, f"--tasks {n}") for n in tasks)
    settings = plan.run
    if run:
        _check_keys(run, RUN_KEYS, "command line")
        settings = _typed(RunSettings, {**_as_dict(plan.run), **run}, "command line")
    return Plan(models, ds, settings)


def _merge_model(base: dict, flags: Mapping) -> dict:
    """Flags over a plan's model: kwargs tables merge key by key (a flag's dtype replaces the
    plan's dtype or torch_dtype); every other key is replaced."""
    out = {**base, **flags}
    for part in ("model_kwargs", "tokenizer_kwargs"):
        if part in flags:
            old = dict(base.get(part) or {})
            if part == "model_kwargs" and {"dtype", "torch_dtype"} & set(flags[part]):
                old.pop("dtype", None)
                old.pop("torch_dtype", None)
            out[part] = {**old, **flags[part]}
    return out


def _as_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def validate(plan: Plan) -> Plan:
    """Checks that need the whole plan: something to run, unique names."""
    if not plan.models:
        raise PlanError("the plan has no model", hint="add [[models]] to the plan file, or give --hf-path")
    if not plan.datasets:
        raise PlanError("the plan has no dataset", hint="add [[datasets]] to the plan file, or give --datasets")
    for kind, names in (("model", [m.name for m in plan.models]), ("dataset", [d.abbr for d in plan.datasets])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PlanError(f"two {kind}s share the name {dup[0]!r}", hint="give each an 'abbr'")
    if (plan.run.max_num_workers is not None and plan.run.max_num_workers < 1) or plan.run.max_workers_per_gpu < 1:
        raise PlanError("max_num_workers and max_workers_per_gpu must be >= 1")
    return plan  # the runner and its [run.<runner>] table: evalcore.runners.registry.check_plan


def default_workers(plan: Plan, n_devices: int) -> int:
    """OpenCompass's default: as many model instances as the workers' GPUs allow (GPUs x workers
    per GPU / GPUs per instance, for the smallest instance); one without GPUs. The driver gives 0
    for a runner whose workers do not get this host's GPUs (under Slurm the login node sees none:
    give --max-num-workers for more jobs at once)."""
    if n_devices == 0:
        return 1
    need = min((m.num_gpus for m in plan.models if m.num_gpus > 0), default=1)
    return max(1, n_devices * plan.run.max_workers_per_gpu // need)


def plan_to_json(plan: Plan) -> str:
    """The whole plan as JSON (kept in the run folder; resume reads it back)."""
    import json

    def conv(obj):
        if isinstance(obj, Mapping):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [conv(v) for v in obj]
        return obj

    run = _as_dict(plan.run)
    run.update(run.pop("runner_settings"))  # as the plan file writes them: [run.<runner>]
    return json.dumps({"models": [conv(_as_dict(m)) for m in plan.models],
                       "datasets": [conv(_as_dict(d)) for d in plan.datasets],
                       "run": conv(run)}, indent=1, sort_keys=True)


def plan_from_json(text: str) -> Plan:
    import json

    doc = json.loads(text)

    def model(d):
        return ModelSpec(**{**d, "model_kwargs": MappingProxyType(d["model_kwargs"]),
                            "tokenizer_kwargs": MappingProxyType(d["tokenizer_kwargs"]),
                            "backend_options": MappingProxyType(d.get("backend_options", {}))})

    def dataset(d):
        d = dict(d)
        for k in ("stop", "choices", "contexts"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        for k in ("label_map",):
            if d.get(k) is not None:
                d[k] = MappingProxyType(d[k])
        d["groups"] = MappingProxyType(d.get("groups", {}))
        d["data_files"] = MappingProxyType(d.get("data_files", {}))
        return DatasetSpec(**d)

    run, tables = _runner_tables(doc["run"])
    run = {**run, "runner_settings": MappingProxyType(tables)}
    run["include_path"] = tuple(run.get("include_path", ()))
    return Plan(tuple(model(m) for m in doc["models"]), tuple(dataset(d) for d in doc["datasets"]),
                RunSettings(**run))


def is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.exists(path)


__all__ = ["Plan", "ModelSpec", "DatasetSpec", "RunSettings", "load_plan", "parse_plan", "with_overrides", "plan_to_json", "plan_from_json",
           "validate", "parse_kwargs", "replace"]
