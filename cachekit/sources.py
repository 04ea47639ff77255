"""What to put in a bundle: source records parsed from command-line specs. Pure, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
KIND_OF_TYPE = {"model": "model", "dataset": "dataset", "space": "metric"}


@dataclass(frozen=True)
class Source:
    """One thing to fetch. `local_path` set means a folder (or file) on this host, not the hub."""

    repo_type: str  # model | dataset | space
    repo_id: str
    revision: str = "main"
    local_path: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    trust_remote_code: bool = False

    @property
    def kind(self) -> str:
        return KIND_OF_TYPE[self.repo_type]

    def label(self) -> str:
        where = f"={self.local_path}" if self.local_path else f"@{self.revision}"
        return f"{self.repo_type} {self.repo_id}{where}"


def check_repo_id(repo_id: str, what: str = "repo id") -> str:
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UsageError(f"invalid {what} {repo_id!r}: expected ORG/NAME",
                         hint="for example HuggingFaceTB/SmolLM2-135M-Instruct")
    return repo_id


def parse_hub_spec(spec: str, repo_type: str, include=(), exclude=(), trust_remote_code=False) -> Source:
    """`ORG/NAME[@REV]` -> Source. REV may be a branch, tag, `refs/...` or a 40-hex commit."""
    repo_id, _, rev = spec.partition("@")
    check_repo_id(repo_id)
    if "@" in spec and not rev:
        raise UsageError(f"empty revision in {spec!r}", hint="write ORG/NAME@REV, or leave out @ for main")
    return Source(repo_type, repo_id, rev or "main", None, tuple(include), tuple(exclude), trust_remote_code)


def parse_local_spec(spec: str, include=(), exclude=(), trust_remote_code=False) -> Source:
    """`[model:|dataset:|space:]ORG/NAME=PATH` -> Source stored under the repo id the user gives."""
    repo_type = "model"
    m = re.match(r"^(model|dataset|space):(.*)$", spec)
    if m:
        repo_type, spec = m.group(1), m.group(2)
    repo_id, sep, path = spec.partition("=")
    if not sep or not path:
        raise UsageError(f"invalid --local {spec!r}: expected [model:|dataset:|space:]ORG/NAME=PATH")
    check_repo_id(repo_id)
    return Source(repo_type, repo_id, "main", path, tuple(include), tuple(exclude), trust_remote_code)


def matches(path: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Glob filtering as huggingface_hub does it (fnmatch; a trailing '/' means the whole folder)."""
    from fnmatch import fnmatch

    def norm(p: str) -> str:
        return p + "*" if p.endswith("/") else p

    if include and not any(fnmatch(path, norm(p)) for p in include):
        return False
    return not any(fnmatch(path, norm(p)) for p in exclude)


def local_spec_for(kind: str, path: str) -> tuple[str, str]:
    """The `--local` spec that bundles a plan's local folder or file, and the repo id it gets:
    `local/<name>` from the file or folder name. Pure."""
    from pathlib import PurePath

    p = PurePath(path.rstrip("/"))
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", p.stem if kind == "dataset" and p.suffix else p.name).strip("-.")
    repo_id = f"local/{name or kind}"
    return (f"{'dataset:' if kind == 'dataset' else ''}{repo_id}={path}", repo_id)


def local_advice(locals_: list[tuple[str, str]], out: str) -> list[str]:
    """Lines that say exactly how to carry a plan's local paths to the offline host. Pure."""
    if not locals_:
        return []
    specs = [local_spec_for(k, p) for k, p in locals_]
    lines = [f"local {k} {p}: read from that path at run time; no prefetch fetches it" for k, p in locals_]
    lines.append("to carry them: copy each to the same path on the offline host, or bundle them:")
    lines.append("  cachekit prefetch " + " ".join(f"--local {s}" for s, _ in specs) + f" --out {out}")
    lines.append("  and name them in the plan: " + ", ".join(f"{p} -> {rid}" for (_, p), (_, rid) in zip(locals_, specs, strict=True))
                 + " (a data file becomes config `default`, split = its file name)")
    return lines
