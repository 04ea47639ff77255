"""`cachekit export`: bundle what this host holds, without any network.

Everything `cachekit ls` lists (models, datasets, metrics) is re-bundled from the entry it was
imported with (the store index keeps it) and the installed files, each checked against its
sha256: the bundle verifies and re-imports identically. Repos only the hub cache holds (filled
online by huggingface_hub) are bundled from their snapshot, datasets converted as prefetch does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import manifest as mf
from . import paths
from .errors import NotFoundError, VerificationError
from .index import Index
from .prefetch import Log, _dataset_entry, build_bundle
from .sources import KIND_OF_TYPE, Source, check_repo_id
from .writer import BundleWriter


def parse_spec(spec: str) -> tuple[Source, bool]:
    """`[KIND:]ORG/NAME[@REV]` -> (source, whether a revision was given)."""
    repo_type = "model"
    m = re.match(r"^(model|dataset|space):(.*)$", spec)
    if m:
        repo_type, spec = m.group(1), m.group(2)
    repo_id, _, rev = spec.partition("@")
    return Source(repo_type, check_repo_id(repo_id), rev or "main"), bool(rev)


def installed_entry(store: Path, src: Source, pinned: bool) -> mf.Entry | None:
    """The entry `cachekit import` installed for this repo (and revision), if any."""
    index = Index(store)
    if not index.path.exists():
        return None
    try:
        commit = index.resolve_commit(src.repo_type, src.repo_id, src.revision if pinned else None)
    except NotFoundError:
        return None
    return index.entry(src.repo_type, src.repo_id, commit)


def _installed_files(e: mf.Entry, cache: Path, store: Path, writer: BundleWriter) -> None:
    for f in e.files:
        path = paths.dataset_file(store, e.repo_id, e.commit, f.path) if e.kind == "dataset" \
            else paths.snapshot_path(cache, e.repo_type, e.repo_id, e.commit, f.path)
        if not path.is_file():
            raise NotFoundError(f"{e.repo_id}/{f.path}: installed by cachekit import but missing from {path.parent}",
                                hint="import the bundle again to repair the cache")
        sha, size = writer.add_file(path)
        if (sha, size) != (f.sha256, f.size):
            raise VerificationError([f"{e.repo_id}/{f.path}: the installed file changed since it was imported "
                                     f"(sha256 {sha[:12]}…, expected {f.sha256[:12]}…)"],
                                    hint="import the bundle again to repair the cache")


def find_commit(cache: Path, src: Source) -> str:
    repo = cache / paths.repo_folder(src.repo_type, src.repo_id)
    if not repo.is_dir():
        raise NotFoundError(f"{src.repo_type} {src.repo_id} is not in the cache {cache}")
    if re.fullmatch(r"[0-9a-f]{40}", src.revision):
        commit = src.revision
    else:
        ref = repo / "refs" / src.revision
        snaps = sorted(p.name for p in (repo / "snapshots").iterdir()) if (repo / "snapshots").is_dir() else []
        if ref.is_file():
            commit = ref.read_text().strip()
        elif src.revision == "main" and len(snaps) == 1:
            commit = snaps[0]
        else:
            raise NotFoundError(f"revision {src.revision!r} of {src.repo_id} is not in the cache {cache}"
                                + (f" (cached commits: {', '.join(s[:12] for s in snaps)})" if snaps else ""))
    if not (repo / "snapshots" / commit).is_dir():
        raise NotFoundError(f"commit {commit} of {src.repo_id} has no snapshot in the cache {cache}")
    return commit


def export(specs: list[str], out: Path, cache_dir: Path | None = None, log: Log = lambda s: None) -> mf.Manifest:
    cache = Path(cache_dir) if cache_dir else paths.hub_cache()
    store = paths.store_root()
    plan: list[tuple[Source, mf.Entry | None, str]] = []
    for spec in specs:  # all errors before any writing
        src, pinned = parse_spec(spec)
        e = installed_entry(store, src, pinned)
        plan.append((src, e, e.commit if e else find_commit(cache, src)))

    def produce(writer: BundleWriter) -> list[mf.Entry]:
        entries = []
        for src, installed, commit in plan:
            if installed is not None:
                log(f"{src.repo_type} {src.repo_id} -> {commit} (as imported)")
                _installed_files(installed, cache, store, writer)
                entries.append(installed)
                continue
            snap = paths.snapshot_path(cache, src.repo_type, src.repo_id, commit)
            log(f"{src.repo_type} {src.repo_id}@{src.revision} -> {commit} (from {cache})")
            if src.repo_type == "dataset":
                entries.append(_dataset_entry(src, commit, snap, writer, "cache"))
                continue
            files = []
            for dirpath, dirnames, filenames in os.walk(snap):
                dirnames.sort()
                for name in sorted(filenames):
                    full = Path(dirpath, name)
                    rel = full.relative_to(snap).as_posix()
                    if not full.exists():
                        raise NotFoundError(f"{src.repo_id}/{rel}: the cache links to a missing blob")
                    etag = Path(os.readlink(full)).name if full.is_symlink() else ""
                    sha, size = writer.add_file(full.resolve())
                    files.append(mf.FileRecord(rel, size, sha, etag if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag) else sha))
            entries.append(mf.Entry(kind=KIND_OF_TYPE[src.repo_type], repo_id=src.repo_id, repo_type=src.repo_type,
                                    revision=src.revision, commit=commit, files=tuple(files), source="cache"))
        return entries

    from .fetch import library_versions

    return build_bundle(Path(out), produce, log, library_versions)
