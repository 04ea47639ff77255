"""The one bundle checker. `cachekit verify` runs all of it; `cachekit import` runs the same
functions before it changes anything (the structure), and on every object it uses (the hash
of the bundle's object, or of the copy that landed in the cache), so the two cannot disagree.

What is checked: the manifest (`manifest.parse`: forms, collisions), the members of the bundle
(`BundleReader.member_problems`: nothing but manifest.json and its objects, no links), the size
of every object, and its sha256.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from . import manifest as mf
from .bundle import BundleReader, Problem, open_bundle
from .checksum import sha256_stream
from .errors import BundleError, VerificationError

Progress = Callable[[int], None] | None


def owners(m: mf.Manifest) -> dict[str, str]:
    """sha256 -> a human name of the first file that uses it (repo/path)."""
    out: dict[str, str] = {}
    for e in m.entries:
        for f in e.files:
            out.setdefault(f.sha256, f"{e.repo_id}/{f.path}")
    return out


def _item(m_owners: dict[str, str], sha: str) -> str:
    return f"{mf.object_path(sha)} [{m_owners[sha]}]"


def structure(reader: BundleReader) -> tuple[mf.Manifest, list[Problem], set[str]]:
    """Everything but the hashes: manifest, members, sizes. Returns the manifest, the problems
    and the objects fit to be hashed (present, right size, a regular file). BundleError when no
    valid manifest can be read (nothing else can be checked then)."""
    m = reader.manifest()
    problems = reader.member_problems(m)
    flagged = {p.member.rstrip("/") for p in problems}
    names = owners(m)
    hashable: set[str] = set()
    for sha, size in sorted(m.objects().items()):
        rel = mf.object_path(sha)
        if any(rel == f or rel.startswith(f + "/") for f in flagged):
            continue  # already named: a link or foreign folder on its way
        try:
            actual = reader.object_size(sha)
        except BundleError as exc:
            problems.append(Problem("unsafe", _item(names, sha), str(exc)))
            continue
        except OSError as exc:
            problems.append(Problem("corrupt", _item(names, sha), f"unreadable: {exc.strerror or exc}"))
            continue
        if actual is None:
            problems.append(Problem("missing", _item(names, sha)))
        elif actual < size:
            problems.append(Problem("truncated", _item(names, sha), f"{actual} of {size} bytes"))
        elif actual > size:
            problems.append(Problem("corrupt", _item(names, sha), f"{actual} bytes, expected {size}"))
        else:
            hashable.add(sha)
    return m, problems, hashable


def content_problem(m_owners: dict[str, str], sha: str, got: str | BaseException) -> Problem | None:
    """The verdict on one object's digest (from the bundle, or from the copy that landed)."""
    if isinstance(got, BundleError):
        return Problem("unsafe", _item(m_owners, sha), str(got))
    if isinstance(got, BaseException):
        return Problem("corrupt", _item(m_owners, sha), f"unreadable: {getattr(got, 'strerror', None) or got}")
    if got != sha:
        return Problem("corrupt", _item(m_owners, sha), f"sha256 {got[:12]}…, expected {sha[:12]}…")
    return None


def hash_objects(reader: BundleReader, m: mf.Manifest, shas: Iterable[str], progress: Progress = None) -> list[Problem]:
    """Hash the bundle's objects on a few threads (hashlib and pread release the GIL)."""
    sizes = m.objects()
    order = sorted(set(shas), key=lambda s: sizes[s], reverse=True)  # largest first

    def one(sha: str) -> str | BaseException:
        try:
            with reader.open_object(sha) as f:
                return sha256_stream(f, progress)[0]
        except (OSError, BundleError) as exc:
            return exc

    workers = min(4, os.cpu_count() or 1, max(1, len(order)))
    with ThreadPoolExecutor(workers) as pool:
        digests = dict(zip(order, pool.map(one, order), strict=True))
    names = owners(m)
    return [p for sha in order if (p := content_problem(names, sha, digests[sha]))]


def ordered(problems: list[Problem]) -> list[Problem]:
    """Member problems as found, then object problems by object path: one order for both commands."""
    members = [p for p in problems if " [" not in p.item]
    objects = sorted((p for p in problems if " [" in p.item), key=lambda p: p.item)
    return members + objects


def wheel_problems(reader: BundleReader, m: mf.Manifest, progress: Progress = None) -> list[Problem]:
    """Size and sha256 of every file under wheels/ (`prefetch --wheels`). Import does not use
    them (pip installs them), so only verify and `cachekit wheels` check them."""
    out = []
    for w in m.wheels:
        item = f"{w.path} [wheel]"
        try:
            actual = reader.member_size(w.path)
            if actual is None:
                out.append(Problem("missing", item))
                continue
            if actual != w.size:
                kind = "truncated" if actual < w.size else "corrupt"
                out.append(Problem(kind, item, f"{actual} bytes, expected {w.size}"))
                continue
            with reader.open_member(w.path) as f:
                got: str | BaseException = sha256_stream(f, progress)[0]
        except (OSError, BundleError) as exc:
            got = exc
        if isinstance(got, BaseException) or got != w.sha256:
            p = content_problem({w.sha256: "wheel"}, w.sha256, got)
            out.append(Problem(p.kind, item, p.detail))
    return out


def verify(path: str | os.PathLike, progress: Progress = None) -> tuple[mf.Manifest, list[Problem]]:
    """Check a bundle completely; return the manifest and every problem (bounded for members)."""
    with open_bundle(path) as reader:
        m, problems, hashable = structure(reader)
        problems += hash_objects(reader, m, hashable, progress)
        problems += wheel_problems(reader, m, progress)
        return m, ordered(problems)


def refuse(problems: list[Problem]) -> None:
    """Raise the error both commands give for these problems."""
    if problems:
        raise VerificationError([str(p) for p in ordered(problems)])
