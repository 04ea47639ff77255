"""Before any model is loaded or GPU leased: find every model, tokenizer and dataset of the plan
in the local cache, and list ALL that are missing at once, with the prefetch command that would
bundle them. File checks only: no HF library is imported here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cachekit import paths
from cachekit.errors import BundleError, CachekitError, NotFoundError
from cachekit.index import Index
from evalcore.backends.checkpoint import WEIGHT_SUFFIXES
from evalcore.backends.registry import backend_kind
from evalcore.errors import (
    EvalcoreError,
    MissingArtefact,
    PlanError,
    StoreIndexUnreadable,
)
from evalcore.plan import data
from evalcore.plan.model_folder import model_folder_problems, tokenizer_problems
from evalcore.plan.spec import DatasetSpec, ModelSpec, Plan, is_local


@dataclass(frozen=True)
class LocalModel:
    """Where a model (or tokenizer) is and what identifies its content."""

    load_path: str  # a repo id (loaded from the hub cache by commit) or a local folder
    revision: str | None  # the commit, for repo ids
    folder: Path  # the files, for hashing
    fingerprint: str  # commit for hub repos, a content hash for local folders
    trust_remote_code: bool


@dataclass(frozen=True)
class Resolved:
    models: dict[str, LocalModel]  # model name -> model
    tokenizers: dict[str, LocalModel]
    datasets: dict[str, data.DataRef]  # dataset abbr -> evaluated split
    fewshot: dict[str, data.DataRef]  # dataset abbr -> few-shot split, when the task uses one


def _folder_fingerprint(folder: Path) -> str:
    """Content hash of a local checkpoint: small files by content, weights by name, size and
    mtime (hashing tens of GB at every start would cost minutes)."""
    h = hashlib.sha256(b"evalcore-folder-v1\n")
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        rel = p.relative_to(folder).as_posix()
        st = p.stat()
        if p.suffix in WEIGHT_SUFFIXES:
            h.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{rel} {hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:40]


def _needs_remote_code(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(cfg.get("auto_map"))


def resolve_model(path: str, revision: str | None, want_trust: bool, index: Index, what: str,
                  check: str | None = None) -> LocalModel:
    """`check` ("model", "model+tokenizer" or "tokenizer"): what a local folder must hold."""
    if is_local(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise MissingArtefact(f"{what} folder {folder} does not exist")
        problems = (tokenizer_problems(folder) if check == "tokenizer" else
                    model_folder_problems(folder, needs_tokenizer=check == "model+tokenizer") if check else [])
        if problems:
            raise MissingArtefact(f"{what} folder {folder} cannot be loaded: " + "; ".join(problems))
        return LocalModel(str(folder), None, folder, _folder_fingerprint(folder), want_trust)
    try:
        commit = index.resolve_commit("model", path, revision)
        recorded_trust = _recorded_trust(index, path, commit)
    except NotFoundError:
        commit, recorded_trust = _from_plain_cache(path, revision), None
    if commit is None:
        rev = f"@{revision}" if revision else ""
        raise MissingArtefact(f"{what} {path}{rev} is not in the local cache", hint="")
    folder = paths.snapshot_path(paths.hub_cache(), "model", path, commit)
    if not folder.is_dir():
        raise MissingArtefact(f"{what} {path}@{commit[:12]} is in the index but its files are gone from {folder}")
    if want_trust and _needs_remote_code(folder) and recorded_trust is False:
        raise PlanError(f"{what} {path} needs trust_remote_code, but its bundle recorded trust_remote_code=false",
                        hint=f"prefetch it again with --trust-remote-code: cachekit prefetch --model {path} "
                             "--trust-remote-code --out BUNDLE")
    return LocalModel(path, commit, folder, commit, want_trust and recorded_trust is not False)


def _recorded_trust(index: Index, repo_id: str, commit: str) -> bool | None:
    for item in index.items():
        if item.repo_type == "model" and item.repo_id == repo_id and item.commit == commit:
            return item.trust_remote_code
    return None


def _from_plain_cache(repo_id: str, revision: str | None) -> str | None:
    """A model in the hub cache that cachekit did not import (e.g. a copied cache)."""
    repo = paths.hub_cache() / paths.repo_folder("model", repo_id)
    rev = revision or "main"
    if len(rev) == 40 and (repo / "snapshots" / rev).is_dir():
        return rev
    ref = repo / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
        if (repo / "snapshots" / commit).is_dir():
            return commit
    return None


def resolve_plan(plan: Plan, tasks: dict[str, object], index: Index | None = None) -> Resolved:
    """Resolve everything; raise MissingArtefact listing every missing item and one prefetch command."""
    index = index or Index()
    if index.path.exists():
        try:
            index.items()
        except BundleError as exc:
            raise StoreIndexUnreadable(f"the cachekit store index cannot be read: {exc}", hint=exc.hint) from None
    missing: list[str] = []
    hub_models: list[str] = []
    hub_datasets: list[str] = []
    models, tokenizers, datasets, fewshot = {}, {}, {}, {}

    def attempt(fn, label: str, hub_list: list[str] | None, hub_id: str | None):
        try:
            return fn()
        except MissingArtefact as exc:
            missing.append(str(exc))
            if hub_list is not None and hub_id and not is_local(hub_id):
                hub_list.append(hub_id)
        except (EvalcoreError, CachekitError) as exc:
            missing.append(f"{label}: {exc}")
        return None

    for m in plan.models:
        if not backend_kind(m.backend).reads_files:  # a stand-in model: nothing to find
            models[m.name] = LocalModel(m.path, None, Path("."), f"{m.backend}:{m.path}", False)
            continue
        lm = attempt(lambda m=m: resolve_model(m.path, m.revision, m.trust_remote_code, index, f"model {m.name}:",
                                               check="model" if m.tokenizer_path else "model+tokenizer"),
                     m.name, hub_models, _with_rev(m.path, m.revision))
        if lm:
            models[m.name] = lm
        if m.tokenizer_path:
            tk = attempt(lambda m=m: resolve_model(m.tokenizer_path, m.tokenizer_revision or m.revision, False, index,
                                                   f"tokenizer of {m.name}:", check="tokenizer"),
                         m.name, hub_models, _with_rev(m.tokenizer_path, m.tokenizer_revision or m.revision))
            if tk:
                tokenizers[m.name] = tk
    for d in plan.datasets:
        task = tasks[d.abbr]
        configs = task.hub.configs if getattr(task, "hub", None) is not None else ()
        ref = attempt(lambda d=d, c=configs: data.resolve(d, index=index, configs=c), d.abbr, hub_datasets,
                      _with_rev(d.path, d.revision))
        if ref:
            datasets[d.abbr] = ref
        if ref and getattr(task, "fewshot", 0) and getattr(task, "fewshot_split", None):
            fs = attempt(lambda d=d, t=task, c=configs: data.resolve(d, split=t.fewshot_split, index=index, configs=c), d.abbr,
                         hub_datasets, _with_rev(d.path, d.revision))
            if fs:
                fewshot[d.abbr] = fs
    if missing:
        cmd = ["cachekit prefetch"] + [f"--model {m}" for m in dict.fromkeys(hub_models)] + \
              [f"--dataset {d}" for d in dict.fromkeys(hub_datasets)] + ["--out bundle.tar"]
        hint = ("on a host with internet: " + " ".join(cmd) + "; then here: cachekit import bundle.tar") \
            if (hub_models or hub_datasets) else "fix the paths in the plan"
        raise MissingArtefact(f"{len(missing)} artefact(s) missing offline: " + "; ".join(missing), hint=hint)
    return Resolved(models, tokenizers, datasets, fewshot)


def _with_rev(path: str, rev: str | None) -> str:
    return f"{path}@{rev}" if rev and rev != "main" else path


__all__ = ["Resolved", "LocalModel", "resolve_plan", "resolve_model", "ModelSpec", "DatasetSpec"]
