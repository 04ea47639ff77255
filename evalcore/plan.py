"""The evaluation plan file (TOML): which models on which datasets. Pure parsing, no I/O beyond
reading the file. This first version covers what `cachekit prefetch --plan` needs: models,
tokenizers and datasets; the engine adds run settings.

    [[models]]
    path = "HuggingFaceTB/SmolLM2-135M-Instruct"   # hub repo id, or a local folder
    revision = "main"                              # optional
    tokenizer_path = "..."                         # optional, defaults to path

    [[datasets]]
    name = "arc_easy_ppl"                          # a built-in name, or:
    [[datasets]]
    abbr = "my_set"
    path = "myorg/my-set"                          # hub dataset repo (or a local file)
    config = "default"
    split = "test"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .catalog import lookup
from .errors import PlanError

MODEL_KEYS = {"path", "revision", "tokenizer_path", "tokenizer_revision", "abbr", "trust_remote_code"}
DATASET_KEYS = {"name", "abbr", "path", "config", "split", "revision", "fewshot_split"}
TOP_KEYS = {"models", "datasets"}


@dataclass(frozen=True)
class ModelSpec:
    path: str
    revision: str = "main"
    tokenizer_path: str | None = None
    tokenizer_revision: str | None = None
    abbr: str = ""
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    abbr: str
    path: str
    config: str | None
    split: str
    revision: str = "main"
    fewshot_split: str | None = None


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def parse_plan(doc: dict, where: str = "plan") -> Plan:
    _check_keys(doc, TOP_KEYS, where)
    models = []
    for i, m in enumerate(doc.get("models", [])):
        _check_keys(m, MODEL_KEYS, f"{where}: models[{i}]")
        if "path" not in m:
            raise PlanError(f"{where}: models[{i}] has no 'path'")
        models.append(ModelSpec(**{k: m[k] for k in m}))
    datasets = []
    for i, d in enumerate(doc.get("datasets", [])):
        _check_keys(d, DATASET_KEYS, f"{where}: datasets[{i}]")
        if "name" in d and "path" not in d:
            ref = lookup(d["name"])
            datasets.append(DatasetSpec(d.get("abbr", d["name"]), ref.repo_id, d.get("config", ref.config),
                                        d.get("split", ref.split), d.get("revision", "main"),
                                        d.get("fewshot_split", ref.fewshot_split)))
        elif "path" in d:
            datasets.append(DatasetSpec(d.get("abbr") or d.get("name") or d["path"], d["path"], d.get("config"),
                                        d.get("split", "test"), d.get("revision", "main"), d.get("fewshot_split")))
        else:
            raise PlanError(f"{where}: datasets[{i}] needs 'name' (built-in) or 'path'")
    return Plan(tuple(models), tuple(datasets))


def load_plan(path: str | os.PathLike) -> Plan:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {p} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan file {p} is not valid TOML: {exc}") from None
    return parse_plan(doc, str(p))


def plan_sources(plan: Plan, include=(), exclude=(), trust_remote_code=False) -> list:
    """The cachekit sources a plan needs from the hub (local folders and files are skipped)."""
    from cachekit.sources import Source

    out = []
    for m in plan.models:
        for path, rev in ((m.path, m.revision), (m.tokenizer_path, m.tokenizer_revision or m.revision)):
            if path and not _is_local(path):
                out.append(Source("model", path, rev or "main", None, tuple(include), tuple(exclude),
                                  trust_remote_code or m.trust_remote_code))
    for d in plan.datasets:
        if not _is_local(d.path):
            out.append(Source("dataset", d.path, d.revision or "main", None, (), (), False))
    return list(dict.fromkeys(out))


def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.exists(path)
