"""The only online module: resolves revisions and downloads files with the real huggingface_hub.

huggingface_hub honours HF_ENDPOINT and HF_TOKEN; it is imported lazily so that offline commands
never load it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import AccessError, NetworkError, NotFoundError
from .sources import Source, matches


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    etag: str  # the hub's blob name: lfs sha256, else the git blob sha1
    sha256: str | None  # known up front for LFS files only


@dataclass(frozen=True)
class Resolved:
    """A hub repo at one commit, with the files that pass the source's filters."""

    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool
    license: str | None
    refs: tuple[str, ...] = ()  # every branch and tag pointing at `commit` when it was resolved


@contextmanager
def hub_errors(source: Source, path: str | None = None) -> Iterator[None]:
    """Map huggingface_hub's exceptions to cachekit's, naming the repo, revision and file."""
    from huggingface_hub import errors as he

    what = f"{source.repo_type} {source.repo_id}"
    try:
        yield
    except he.GatedRepoError:
        raise AccessError(f"{what} is gated and HF_TOKEN is missing or may not read it") from None
    except he.RepositoryNotFoundError:
        raise NotFoundError(f"unknown {what} on the hub (or it is private and HF_TOKEN may not read it)") from None
    except he.RevisionNotFoundError:
        raise NotFoundError(f"unknown revision {source.revision!r} of {what}") from None
    except he.EntryNotFoundError:
        raise NotFoundError(f"unknown file {path!r} in {what}@{source.revision}") from None
    except he.OfflineModeIsEnabled:
        raise NetworkError(f"cannot fetch {what}: HF_HUB_OFFLINE is set",
                           hint="prefetch runs on a host with access to the hub; unset HF_HUB_OFFLINE there") from None
    except he.HfHubHTTPError as exc:
        raise NetworkError(f"hub error for {what}: {str(exc).splitlines()[0]}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise NetworkError(f"cannot reach the hub for {what}: {exc}") from None
    except OSError as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore", "huggingface_hub")):
            raise NetworkError(f"transfer of {what} failed: {exc}") from None
        raise
    except Exception as exc:  # httpx2 transport errors do not derive from OSError
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise NetworkError(f"transfer of {what} failed: {type(exc).__name__}: {exc}") from None
        raise


def resolve(source: Source) -> Resolved:
    """Pin `source.revision` to a commit and list its files (filtered by include/exclude)."""
    from huggingface_hub import HfApi

    with hub_errors(source):
        info = HfApi().repo_info(source.repo_id, repo_type=source.repo_type,
                                 revision=source.revision, files_metadata=True)
    files = []
    for s in info.siblings or ():
        if not matches(s.rfilename, source.include, source.exclude):
            continue
        lfs = s.lfs
        sha = getattr(lfs, "sha256", None) if lfs else None
        etag = sha or s.blob_id or ""
        files.append(RemoteFile(s.rfilename, int(s.size or (lfs.size if lfs else 0) or 0), etag, sha))
    for pattern in source.include:
        if not any(ch in pattern for ch in "*?[") and not pattern.endswith("/") and \
                not any(f.path == pattern for f in files):
            raise NotFoundError(f"unknown file {pattern!r} in {source.repo_type} {source.repo_id}@{source.revision}")
    if not files:
        raise NotFoundError(f"no file of {source.repo_type} {source.repo_id}@{source.revision} matches "
                            f"--include {list(source.include)} --exclude {list(source.exclude)}")
    card = getattr(info, "card_data", None)
    license_ = card.get("license") if card is not None and hasattr(card, "get") else None
    return Resolved(info.sha, tuple(files), bool(getattr(info, "gated", False)), license_,
                    refs_at(source, info.sha))


def refs_at(source: Source, commit: str) -> tuple[str, ...]:
    """Names of the branches and tags that point at `commit` now (the hub's refs listing)."""
    from huggingface_hub import HfApi

    with hub_errors(source):
        refs = HfApi().list_repo_refs(source.repo_id, repo_type=source.repo_type)
    return tuple(sorted({r.name for r in [*refs.branches, *refs.tags] if r.target_commit == commit}))


def download(source: Source, commit: str, path: str, cache_dir: Path) -> Path:
    """Download one file at a pinned commit into `cache_dir`; the client resumes partial files."""
    from huggingface_hub import hf_hub_download

    with hub_errors(source, path):
        return Path(hf_hub_download(source.repo_id, path, repo_type=source.repo_type,
                                    revision=commit, cache_dir=str(cache_dir)))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the bundle's contents."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("huggingface_hub", "datasets", "pyarrow", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
