"""`cachekit prefetch`: resolve sources, pin each to a commit, store every file once, write the
manifest last, and optionally pack the folder into one .tar. A rerun (after an interruption, or
to add more sources to a bundle) reuses every object already stored and verified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import fetch
from . import manifest as mf
from .bundle import open_bundle, pack_tar
from .convert import is_data_file, to_parquet
from .errors import NotFoundError, UsageError, VerificationError
from .sources import Source, matches
from .wheels import WheelTarget, fetch_wheels, preflight
from .writer import BundleWriter, staging_for

Log = Callable[[str], None]


def prefetch(sources: list[Source], out: Path, log: Log = lambda s: None, progress_bars: bool = True,
             wheels: WheelTarget | None = None) -> mf.Manifest:
    """`wheels`: also put the toolkit's wheel and its dependencies' into wheels/ (cachekit.wheels)."""
    if not sources and wheels is None:
        raise UsageError("nothing to prefetch", hint="give --model, --dataset, --space, --local, --plan or --wheels")
    if wheels is not None:
        preflight()  # before any folder is made

    def produce(writer: BundleWriter) -> list[mf.Entry]:
        entries: list[mf.Entry] = []
        queue = list(dict.fromkeys(sources))
        done: set[tuple[str, str, str]] = set()
        while queue:
            src = queue.pop(0)
            if (src.repo_type, src.repo_id, src.revision) in done:
                continue
            done.add((src.repo_type, src.repo_id, src.revision))
            entry = _fetch_one(src, writer, log, progress_bars)
            entries.append(entry)
            for dep in entry.dependencies:
                queue.append(Source("model", dep, "main", None, (), (), True))
        return entries

    return build_bundle(Path(out), produce, log, fetch.library_versions, wheels)


def build_bundle(out: Path, produce: Callable[[BundleWriter], list[mf.Entry]], log: Log,
                 libraries: Callable[[], dict], wheels: WheelTarget | None = None) -> mf.Manifest:
    """Open (or continue) the staging folder for `out`, let `produce` add entries, then write the
    manifest last and, for a .tar, pack it atomically."""
    staging = staging_for(out)
    previous = _previous_bundle(out, staging)
    fresh = not staging.exists()
    writer = BundleWriter(staging, previous)
    try:
        entries = produce(writer)
        if writer.old_manifest is not None:
            _carry_over(writer, entries)
        if wheels is not None:
            m = writer.finish(entries, libraries(), fetch_wheels(writer, wheels, log), wheels.as_dict())
        else:
            m = writer.finish(entries, libraries())
    except BaseException:
        writer.close()
        if fresh and not writer.stored_anything:
            shutil.rmtree(staging, ignore_errors=True)  # nothing worth resuming: leave no trace
        elif writer.stored_anything:
            log(f"kept the files downloaded so far in {staging}: rerun the same command to continue")
        raise
    finally:
        writer.close()
        if previous is not None:
            previous.close()
    if out.suffix == ".tar":
        log(f"packing {out}")
        pack_tar(staging, out)
        shutil.rmtree(staging, ignore_errors=True)
    return m


def _previous_bundle(out: Path, staging: Path):
    """The bundle being extended, if `out` already is one; refuse to write into anything else."""
    if out.suffix == ".tar":
        return open_bundle(out) if out.exists() else None
    if not out.exists():
        return None
    if not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if (out / mf.MANIFEST_NAME).exists():
        return open_bundle(out)
    if any(p.name != ".partial" for p in out.iterdir()):
        raise UsageError(f"--out {out} is a folder that is not a bundle; refusing to write into it",
                         hint="choose a new or empty folder, or an existing bundle to extend")
    return None


def _carry_over(writer: BundleWriter, new: list[mf.Entry]) -> None:
    """Entries of the bundle being extended stay; make sure their objects are all still there."""
    replaced = {e.key for e in new}
    missing = [f"{e.repo_id}/{f.path}" for e in writer.old_manifest.entries if e.key not in replaced
               for f in e.files if not writer.has_object(f.sha256, f.size)]
    if missing:
        raise VerificationError([f"missing or corrupt in the existing bundle: {m}" for m in missing],
                                hint="run `cachekit verify` on it, or write to a new --out")


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if enabled else True, leave=False)


def _fetch_one(src: Source, writer: BundleWriter, log: Log, bars: bool) -> mf.Entry:
    if src.local_path:
        return _local(src, writer, log)
    resolved = fetch.resolve(src)
    log(f"{src.repo_type} {src.repo_id}@{src.revision} -> {resolved.commit}")
    if src.repo_type == "dataset":
        return _hub_dataset(src, resolved, writer, log)
    files = []
    todo = []
    for rf in resolved.files:
        rec = writer.known(src.repo_type, src.repo_id, resolved.commit, rf.path)
        if rec is None and rf.sha256 and writer.has_object(rf.sha256, rf.size):
            rec = mf.FileRecord(rf.path, rf.size, rf.sha256)
        if rec is not None:
            files.append(mf.FileRecord(rf.path, rec.size, rec.sha256, rf.etag))
        else:
            todo.append(rf)
    if files:
        log(f"  {len(files)} file(s) already in the bundle")
    with _bar(sum(f.size for f in todo), src.repo_id, bars) as bar:
        for rf in todo:
            local = fetch.download(src, resolved.commit, rf.path, writer.hub_cache)
            sha, size = writer.add_file(local.resolve(), move=True)
            if (rf.sha256 and sha != rf.sha256) or size != rf.size:
                raise VerificationError([f"download of {src.repo_id}/{rf.path} does not match the hub's "
                                         f"metadata (sha256 {sha[:12]}…, {size} bytes)"],
                                        hint="run prefetch again; if it persists the mirror serves bad data")
            writer.record(src.repo_type, src.repo_id, resolved.commit, rf.path, sha, size)
            files.append(mf.FileRecord(rf.path, size, sha, rf.etag))
            bar.update(size)
    deps = _remote_code_deps(writer, files) if src.repo_type == "model" else ()
    if deps and not src.trust_remote_code:
        log(f"  warning: {src.repo_id} ships custom code (auto_map); recorded trust_remote_code=false, "
            f"so it will not load. Prefetch with --trust-remote-code to bundle it and {list(deps)}")
    return mf.Entry(
        kind=src.kind, repo_id=src.repo_id, repo_type=src.repo_type, revision=src.revision,
        commit=resolved.commit, files=tuple(sorted(files, key=lambda f: f.path)), source="hub",
        include=src.include, exclude=src.exclude, license=resolved.license, gated=resolved.gated,
        trust_remote_code=src.trust_remote_code,
        dependencies=tuple(d for d in deps if d) if src.trust_remote_code else (),
        refs=tuple(r for r in resolved.refs if r != src.revision),
        requirements=_requirements(writer, files) if src.repo_type == "space" else (),
    )


def _object_text(writer: BundleWriter, f: mf.FileRecord) -> str | None:
    for base in (writer.folder, writer.partial):
        p = base / mf.object_path(f.sha256)
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace")
    return None


def _requirements(writer: BundleWriter, files: list[mf.FileRecord]) -> tuple[str, ...]:
    """A space's pip requirements (an evaluate metric's own dependencies), from requirements.txt."""
    from .evaluate_modules import requirements

    f = next((f for f in files if f.path == "requirements.txt"), None)
    text = _object_text(writer, f) if f else None
    return requirements(text) if text else ()


def _remote_code_deps(writer: BundleWriter, files: list[mf.FileRecord]) -> tuple[str, ...]:
    """Repos named in config.json's auto_map (`other/repo--module.Class`); () if no custom code.

    A model with custom code but no foreign repo returns its own marker "" (filtered out)."""
    cfg = next((f for f in files if f.path == "config.json"), None)
    if cfg is None:
        return ()
    for base in (writer.folder, writer.partial):
        p = base / mf.object_path(cfg.sha256)
        if p.is_file():
            try:
                auto_map = json.loads(p.read_text(encoding="utf-8")).get("auto_map") or {}
            except (ValueError, UnicodeDecodeError):
                return ()
            refs = [v for vals in auto_map.values() for v in (vals if isinstance(vals, list) else [vals]) if v]
            foreign = sorted({r.split("--")[0] for r in refs if "--" in r})
            return tuple(foreign) if foreign else (("",) if refs else ())
    return ()


PARQUET_EXPORT = "refs/convert/parquet"


def _is_script_only(resolved: fetch.Resolved) -> bool:
    """A repo with a loading script (`*.py` at the top) and no data file: datasets 4+ cannot load it."""
    top = [f.path for f in resolved.files if "/" not in f.path]
    return any(p.endswith(".py") for p in top) and not any(is_data_file(Path(f.path)) for f in resolved.files)


def _hub_dataset(src: Source, resolved: fetch.Resolved, writer: BundleWriter, log: Log) -> mf.Entry:
    if _is_script_only(resolved) and src.revision != PARQUET_EXPORT:
        script = next(f.path for f in resolved.files if "/" not in f.path and f.path.endswith(".py"))
        export = Source("dataset", src.repo_id, PARQUET_EXPORT, None, src.include, src.exclude)
        try:
            converted = fetch.resolve(export)
        except NotFoundError:
            raise NotFoundError(f"dataset {src.repo_id}@{src.revision} has only a loading script ({script}) and no data "
                                f"files, and the hub has no {PARQUET_EXPORT} revision for it",
                                hint="datasets 4+ cannot run loading scripts; ask the owner for Parquet data files, "
                                     "or prefetch a local copy with --local dataset:ORG/NAME=PATH") from None
        log(f"  {src.repo_id} has a loading script ({script}): taking the hub's Parquet export "
            f"{PARQUET_EXPORT} -> {converted.commit}")
        entry = _hub_dataset(export, converted, writer, log)
        return replace(entry, converted_from={"revision": src.revision, "commit": resolved.commit})
    old = _reusable_entry(writer, src, resolved.commit)
    if old is not None:
        log("  already in the bundle")
        return old
    for rf in resolved.files:
        fetch.download(src, resolved.commit, rf.path, writer.hub_cache)
    snapshot = writer.hub_cache / f"datasets--{src.repo_id.replace('/', '--')}" / "snapshots" / resolved.commit
    entry = _dataset_entry(src, resolved.commit, snapshot, writer, "hub", resolved.license, resolved.gated)
    return replace(entry, refs=tuple(r for r in resolved.refs if r != src.revision))


def _reusable_entry(writer: BundleWriter, src: Source, commit: str) -> mf.Entry | None:
    if writer.old_manifest is None:
        return None
    for e in writer.old_manifest.entries:
        if e.key == (src.repo_type, src.repo_id, commit) and e.include == src.include and e.exclude == src.exclude \
                and all(writer.has_object(f.sha256, f.size) for f in e.files):
            return e
    return None


def _dataset_entry(src: Source, commit: str, root: Path, writer: BundleWriter, origin: str,
                   license_: str | None = None, gated: bool = False) -> mf.Entry:
    work = writer.partial / "convert" / commit
    shutil.rmtree(work, ignore_errors=True)
    converted = to_parquet(root, work / "out", writer.partial / "datasets-cache")
    files, splits = [], {}
    for config, by_split in sorted(converted.items()):
        for split, (path, rows) in sorted(by_split.items()):
            rel = f"{config}/{split}.parquet"
            sha, size = writer.add_file(path, move=True)
            files.append(mf.FileRecord(rel, size, sha, sha))
            splits.setdefault(config, {})[split] = {"path": rel, "rows": rows}
    shutil.rmtree(work, ignore_errors=True)
    return mf.Entry(kind="dataset", repo_id=src.repo_id, repo_type="dataset", revision=src.revision,
                    commit=commit, files=tuple(files), source=origin, include=src.include,
                    exclude=src.exclude, license=license_, gated=gated, splits=splits)


def local_commit(records: list[tuple[str, str, int]]) -> str:
    """A 40-hex id for a local folder's content: stable across hosts and file order."""
    h = hashlib.sha1(b"cachekit-local-v1\n")
    for path, sha, size in sorted(records):
        h.update(f"{sha} {size} {path}\n".encode())
    return h.hexdigest()


def _local_files(root: Path, src: Source) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if matches(rel, src.include, src.exclude):
                out.append((rel, full))
    return out


def _local(src: Source, writer: BundleWriter, log: Log) -> mf.Entry:
    root = Path(src.local_path).expanduser()
    if not root.exists():
        raise NotFoundError(f"local {src.repo_type} {src.repo_id}: {root} does not exist")
    if src.repo_type == "dataset":
        from .checksum import sha256_file

        parts = [(p, sha256_file(f), f.stat().st_size) for p, f in
                 (_local_files(root, src) if root.is_dir() else [(root.name, root)])]
        commit = local_commit(parts)
        old = _reusable_entry(writer, src, commit)
        if old is not None:
            log(f"local dataset {src.repo_id}: already in the bundle")
            return old
        log(f"local dataset {src.repo_id} <- {root} ({commit[:12]})")
        return _dataset_entry(src, commit, root, writer, "local")
    if not root.is_dir():
        raise UsageError(f"local {src.repo_type} {src.repo_id}: {root} is not a folder")
    listing = _local_files(root, src)
    if not listing:
        raise NotFoundError(f"local {src.repo_type} {src.repo_id}: no file in {root} matches the filters")
    files = []
    for rel, full in listing:
        sha, size = writer.add_file(full)
        files.append(mf.FileRecord(rel, size, sha, sha))
    commit = local_commit([(f.path, f.sha256, f.size) for f in files])
    log(f"local {src.repo_type} {src.repo_id} <- {root} ({commit[:12]}, {len(files)} files)")
    deps = _remote_code_deps(writer, files) if src.repo_type == "model" else ()
    return mf.Entry(kind=src.kind, repo_id=src.repo_id, repo_type=src.repo_type, revision="main",
                    commit=commit, files=tuple(files), source="local", include=src.include,
                    exclude=src.exclude, trust_remote_code=src.trust_remote_code,
                    dependencies=tuple(d for d in deps if d) if src.trust_remote_code else (),
                    requirements=_requirements(writer, files) if src.repo_type == "space" else ())
