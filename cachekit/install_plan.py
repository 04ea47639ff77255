"""What `cachekit import` would do, decided before anything is written: every file of every
entry is `new`, `present` (same bytes already installed), `conflicting` (different bytes, or a
file where a folder is needed, already there) or `corrupt` (the bundle's object does not match
its hash); likewise each dataset card, Arrow cache and evaluate module. Reads the caches, writes
nothing.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import dataset_cache, evaluate_modules, paths
from . import manifest as mf
from .bundle import Problem
from .checksum import git_blob_sha1_bytes, sha256_file

NEW, PRESENT, CONFLICTING, CORRUPT = "new", "present", "conflicting", "corrupt"


@dataclass
class FileStep:
    entry: mf.Entry
    file: mf.FileRecord
    blob: Path  # where the bytes go (hub blob, or dataset file in the store)
    link: Path | None  # snapshot link to create (hub repos only)
    status: str = NEW
    detail: str = ""
    staged: Path | None = None
    root: Path | None = None  # the hub cache or the store: where its staging folder goes

    @property
    def name(self) -> str:
        return f"{self.entry.repo_id}@{self.entry.commit[:12]}/{self.file.path}"


@dataclass
class CardStep:
    """A dataset's README.md in the hub layout: its `configs:` header, made from the manifest."""

    entry: mf.Entry
    blob: Path
    link: Path
    data: bytes
    status: str = NEW


@dataclass
class ArrowStep:
    """One config of a dataset in the `datasets` Arrow cache (what load_dataset reads offline)."""

    entry: mf.Entry
    config: str
    target: Path
    status: str = NEW
    built: Path | None = None


@dataclass
class ModuleStep:
    """An `evaluate` metric in evaluate's module cache (what evaluate.load reads offline)."""

    entry: mf.Entry
    target: Path  # .../evaluate_modules/metrics/<org--name>
    status: str = NEW
    built: Path | None = None


SKIPPED = "skipped"  # evaluate is not installed here: the metric is in the hub layout only


@dataclass
class Plan:
    steps: list[FileStep]
    refs: list[tuple[Path, str | None, str]] = field(default_factory=list)  # (ref file, old, new)
    entries: tuple[mf.Entry, ...] = ()
    cards: list[CardStep] = field(default_factory=list)
    arrow: list[ArrowStep] = field(default_factory=list)
    modules: list[ModuleStep] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def nothing_to_do(self) -> bool:
        return all(s.status in (PRESENT, SKIPPED) for s in [*self.steps, *self.cards, *self.arrow, *self.modules]) \
            and not self.refs

    def problems(self) -> list[str]:
        return [f"{s.status}: {s.name}" + (f" ({s.detail})" if s.detail else "")
                for s in self.steps if s.status in (CONFLICTING, CORRUPT)] + \
               [f"{CONFLICTING}: {c.link} (a different README.md is already in the cache)"
                for c in self.cards if c.status == CONFLICTING]

    def conflicts(self) -> list[str]:
        return [p for p in self.problems() if p.startswith(CONFLICTING)]


def _same_content(path: Path, sha256: str, size: int) -> bool | None:
    """True/False if `path` holds (or not) these bytes; None if nothing readable is there."""
    try:
        if not path.exists():
            return None
        if not path.is_file() or path.stat().st_size != size:
            return False
        return sha256_file(path) == sha256
    except OSError:
        return False


def _obstacle(root: Path, target: Path, folder: bool = False) -> str | None:
    """Why `target` cannot be created under `root`: a file or link where a folder is needed, or
    a folder where the file goes (or a file where the folder `target` goes)."""
    rel = target.relative_to(root).parts
    p = root
    for i, part in enumerate(rel):
        p = p / part
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{p} cannot be read: {exc.strerror}"
        last = i == len(rel) - 1
        if last and not folder:
            return f"{p} is a folder" if stat.S_ISDIR(st.st_mode) else None
        if not stat.S_ISDIR(st.st_mode):
            return f"{p} is a {'link' if stat.S_ISLNK(st.st_mode) else 'file'} where a folder is needed"
    return None


def _hub_step(e: mf.Entry, f: mf.FileRecord, hub: Path) -> FileStep:
    """A file in the hub layout: blobs/<etag> and a snapshots/<commit>/<path> link to it."""
    link = paths.snapshot_path(hub, e.repo_type, e.repo_id, e.commit, f.path)
    step = FileStep(e, f, paths.blob_path(hub, e.repo_type, e.repo_id, f.etag), link, root=hub)
    blocked = _obstacle(hub, link.parent, folder=True) or _obstacle(hub, step.blob)
    same = None if blocked else _same_content(link, f.sha256, f.size)
    if same is None and not blocked and not link.is_symlink() and os.path.lexists(link):
        same = False
    if same is None and not blocked:
        same = _same_content(step.blob, f.sha256, f.size)
        if same:  # bytes there, link missing: only the link is new
            step.detail = "link only"
            return step
    return _verdict(step, blocked, same)


def _verdict(step: FileStep, blocked: str | None, same: bool | None) -> FileStep:
    if blocked:
        step.status, step.detail = CONFLICTING, blocked
    elif same is True:
        step.status = PRESENT
    elif same is False:
        step.status, step.detail = CONFLICTING, "different bytes already in the cache"
    return step


def _card_step(e: mf.Entry, hub: Path) -> CardStep:
    data = dataset_cache.readme(e)
    link = paths.snapshot_path(hub, "dataset", e.repo_id, e.commit, "README.md")
    card = CardStep(e, paths.blob_path(hub, "dataset", e.repo_id, git_blob_sha1_bytes(data)), link, data)
    if os.path.lexists(link) or _obstacle(hub, link.parent, folder=True):
        same = link.is_file() and link.read_bytes() == data
        card.status = PRESENT if same else CONFLICTING
    return card


def make_plan(m: mf.Manifest, hub: Path, store: Path, arrow_root: Path | None = None,
              modules_root: Path | None = None) -> Plan:
    """What an import would do. Datasets go to the store (evalcore's index), to the hub layout
    (with a README `configs:` header) and, when `arrow_root` is given, to the datasets cache;
    evaluate metrics to the hub layout and, when `modules_root` is given, to evaluate's module
    cache (if evaluate is installed)."""
    steps: list[FileStep] = []
    refs: list[tuple[Path, str | None, str]] = []
    cards: list[CardStep] = []
    arrow: list[ArrowStep] = []
    modules: list[ModuleStep] = []
    have_evaluate = importlib.util.find_spec("evaluate") is not None
    for e in m.entries:
        for f in e.files:
            if e.kind == "dataset":
                step = FileStep(e, f, paths.dataset_file(store, e.repo_id, e.commit, f.path), None, root=store)
                blocked = _obstacle(store, step.blob)
                steps.append(_verdict(step, blocked, None if blocked else _same_content(step.blob, f.sha256, f.size)))
            steps.append(_hub_step(e, f, hub))
        if e.kind == "dataset" and e.splits:
            cards.append(_card_step(e, hub))
            for config in sorted(e.splits) if arrow_root is not None else ():
                target = dataset_cache.arrow_dir(arrow_root, e.repo_id, config, e.commit)
                arrow.append(ArrowStep(e, config, target, PRESENT if os.path.lexists(target) else NEW))
        script = evaluate_modules.script_of(e)
        if script is not None and modules_root is not None:
            step = ModuleStep(e, evaluate_modules.module_dir(modules_root, e.repo_id))
            if not have_evaluate:
                step.status = SKIPPED
            elif evaluate_modules.installed(modules_root, e, script):
                step.status = PRESENT
            modules.append(step)
        for name in e.ref_names:
            ref = paths.ref_path(hub, e.repo_type, e.repo_id, name)
            blocked = _obstacle(hub, ref)
            if blocked:
                steps.append(FileStep(e, mf.FileRecord(f"refs/{name}", 0, "", ""), ref, None,
                                      CONFLICTING, blocked))
                continue
            old = ref.read_text().strip() if ref.is_file() else None
            if old != e.commit:
                refs.append((ref, old, e.commit))
    return Plan(steps, refs, m.entries, cards, arrow, modules)


def copied(plan: Plan) -> list[FileStep]:
    """The steps whose bytes this import copies from the bundle."""
    return [s for s in plan.steps if s.status == NEW and s.detail != "link only"]


def mark_corrupt(plan: Plan, problems: list[Problem]) -> None:
    bad = {p.member.rsplit("/", 1)[-1]: p.detail or p.kind for p in problems}
    for s in plan.steps:
        if s.status in (NEW, PRESENT) and s.file.sha256 in bad:
            s.status, s.detail = CORRUPT, bad[s.file.sha256]
