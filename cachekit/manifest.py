"""The bundle manifest: pure records, JSON (de)serialisation and validation. No I/O here."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from posixpath import normpath

from .errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("model", "dataset", "metric", "asset")
REPO_TYPES = ("model", "dataset", "space")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_ETAG = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # git blob sha1, or sha256 (LFS)
# Characters git refuses in a ref name (git check-ref-format), plus every control character.
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
WHEELS_DIR = "wheels"  # `cachekit prefetch --wheels`: pip's wheel files, kept by name for --find-links
_WHEEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+!-]*\.whl$")


@dataclass(frozen=True)
class FileRecord:
    """One logical file of an entry. `etag` is the hub's name for the blob (sha1 or sha256)."""

    path: str
    size: int
    sha256: str
    etag: str = ""


@dataclass(frozen=True)
class Entry:
    """One pinned artefact: a model, a converted dataset, a metric space or an asset repo."""

    kind: str
    repo_id: str
    repo_type: str
    revision: str
    commit: str
    files: tuple[FileRecord, ...]
    source: str = "hub"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    license: str | None = None
    gated: bool = False
    trust_remote_code: bool = False
    dependencies: tuple[str, ...] = ()
    # datasets only: {config: {split: {"path": "<config>/<split>.parquet", "rows": n}}}
    splits: dict = field(default_factory=dict)
    # every branch and tag that pointed at `commit` at prefetch time (`revision` aside)
    refs: tuple[str, ...] = ()
    # a script dataset taken from the hub's Parquet export: {"revision": asked, "commit": its commit}
    converted_from: dict = field(default_factory=dict)
    # spaces (evaluate metrics): the pip requirements of the space's requirements.txt
    requirements: tuple[str, ...] = ()

    @property
    def ref_names(self) -> tuple[str, ...]:
        """The refs an import writes: the revision asked for (unless a commit id) and `refs`."""
        names = [] if self.revision == self.commit else [self.revision]
        return tuple(dict.fromkeys(names + [r for r in self.refs if r != self.commit]))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.repo_type, self.repo_id, self.commit)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]
    created: str
    tool_version: str
    libraries: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # wheel files under wheels/ (path "wheels/<name>.whl"), and what they were downloaded for
    wheels: tuple[FileRecord, ...] = ()
    wheels_target: dict = field(default_factory=dict)

    def objects(self) -> dict[str, int]:
        """sha256 -> size of every distinct object the bundle must hold."""
        return {f.sha256: f.size for e in self.entries for f in e.files}

    def members(self) -> set[str]:
        """Every file of the bundle besides manifest.json: objects and wheels."""
        return {object_path(s) for s in self.objects()} | {w.path for w in self.wheels}

    def to_json(self) -> str:
        doc = {
            "schema_version": self.schema_version,
            "tool": {"name": "cachekit", "version": self.tool_version},
            "created": self.created,
            "libraries": dict(sorted(self.libraries.items())),
            "entries": [_entry_to_dict(e) for e in self.entries],
        }
        if self.wheels:
            doc["wheels"] = {"target": self.wheels_target,
                             "files": [{"path": w.path, "size": w.size, "sha256": w.sha256} for w in self.wheels]}
        return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def _entry_to_dict(e: Entry) -> dict:
    d = asdict(e)
    d["files"] = [asdict(f) for f in e.files]
    for k in ("include", "exclude", "dependencies", "refs", "requirements"):
        d[k] = list(d[k])
    return d


def check_relpath(path: str, what: str = "path") -> str:
    """Return `path` if it is a safe relative POSIX path inside the bundle, else raise."""
    if not isinstance(path, str) or not path:
        raise BundleError(f"{what} is empty or not a string: {path!r}")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or "\\" in path:
        raise BundleError(f"{what} is absolute or not a POSIX path: {path!r}")
    if "\x00" in path or any(part in ("..", ".", "") for part in path.split("/")) or normpath(path) != path:
        raise BundleError(f"{what} leaves the bundle or is not normalised: {path!r}")
    return path


def revision_problem(revision: str, commit: str) -> str | None:
    """Why `revision` is not a name the hub could have given (a git ref name, or the commit)."""
    if not revision:
        return "empty"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return None if revision == commit else "a commit id other than the entry's commit"
    if len(revision) > 255 or _BAD_REF_CHARS.search(revision):
        return "too long, or a space, control or one of ~^:?*[\\ characters"
    parts = revision.split("/")
    if revision == "@" or "@{" in revision or ".." in revision or revision.endswith(".") or \
            any(not p or p.startswith(".") or p.endswith(".lock") for p in parts):
        return "not a git ref name"
    return None


def path_collision(paths: set[str]) -> str | None:
    """A path that is also a folder of another path (`a` and `a/b`): both cannot exist on disk."""
    for p in sorted(paths):
        parts = p.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in paths:
                return f"{folder!r} is both a file and the folder of {p!r}"
    return None


def _check_repo_collisions(entries: tuple[Entry, ...]) -> None:
    """Entries of one repo share its blobs/ and refs/ folders: an etag names one content, a
    revision one commit, and no ref may be the folder of another."""
    by_repo: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        by_repo.setdefault((e.repo_type, e.repo_id), []).append(e)
    for (repo_type, repo_id), group in by_repo.items():
        content: dict[str, tuple[str, str]] = {}
        for e in group:
            for f in e.files:
                other = content.setdefault(f.etag, (f.sha256, f.path))
                if other[0] != f.sha256:
                    raise BundleError(f"{repo_type} {repo_id}: files {other[1]!r} and {f.path!r} have the same "
                                      f"etag {f.etag[:12]}… but different bytes")
        revisions: dict[str, str] = {}
        for e in group:
            for rev in e.ref_names:
                if revisions.setdefault(rev, e.commit) != e.commit:
                    raise BundleError(f"{repo_type} {repo_id}: revision {rev!r} names two commits")
        clash = path_collision(set(revisions))
        if clash:
            raise BundleError(f"{repo_type} {repo_id}: revision {clash}")


def object_path(sha256: str) -> str:
    """Where the object with this sha256 lives inside a bundle."""
    return f"objects/{sha256[:2]}/{sha256}"


def parse(text: str | bytes) -> Manifest:
    """Parse and validate a manifest; any defect raises BundleError naming the item."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError("manifest.json is not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"manifest.json has unknown schema version {version!r} (this cachekit reads {SCHEMA_VERSION})",
            hint="use the cachekit version that wrote the bundle, or prefetch it again with this one",
        )
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise BundleError("manifest.json has no 'entries' list")
    parsed = tuple(_parse_entry(i, e) for i, e in enumerate(entries))
    seen: set[tuple[str, str, str]] = set()
    for e in parsed:
        if e.key in seen:
            raise BundleError(f"duplicate entry in manifest: {e.repo_type} {e.repo_id}@{e.commit}")
        seen.add(e.key)
    sizes: dict[str, int] = {}
    for e in parsed:
        for f in e.files:
            if sizes.setdefault(f.sha256, f.size) != f.size:
                raise BundleError(f"object {f.sha256} is listed with two different sizes")
    _check_repo_collisions(parsed)
    wheels, target = _parse_wheels(doc.get("wheels"))
    tool = doc.get("tool") or {}
    return Manifest(
        wheels=wheels, wheels_target=target,
        entries=parsed,
        created=str(doc.get("created", "")),
        tool_version=str(tool.get("version", "")) if isinstance(tool, dict) else "",
        libraries=doc.get("libraries") if isinstance(doc.get("libraries"), dict) else {},
        schema_version=version,
    )


def wheel_path(filename: str) -> str:
    """Where a wheel file lives inside a bundle; BundleError for a name pip would not write."""
    if not isinstance(filename, str) or not _WHEEL_NAME.match(filename):
        raise BundleError(f"not a wheel file name: {filename!r}")
    return f"{WHEELS_DIR}/{filename}"


def _parse_wheels(d: object) -> tuple[tuple[FileRecord, ...], dict]:
    if d is None:
        return (), {}
    if not isinstance(d, dict) or not isinstance(d.get("files"), list):
        raise BundleError("manifest.json: 'wheels' is not {target, files}")
    target = d.get("target") or {}
    if not isinstance(target, dict):
        raise BundleError("manifest.json: 'wheels.target' is not an object")
    out, seen = [], set()
    for j, f in enumerate(d["files"]):
        if not isinstance(f, dict):
            raise BundleError(f"manifest.json: wheel #{j} is not an object")
        path = f.get("path")
        if not isinstance(path, str) or path != wheel_path(path.removeprefix(WHEELS_DIR + "/")):
            raise BundleError(f"manifest.json: wheel #{j} path {path!r} is not wheels/<name>.whl")
        if path in seen:
            raise BundleError(f"manifest.json: duplicate wheel {path!r}")
        seen.add(path)
        size, sha = _size_and_sha256(f, f"manifest.json: wheel {path!r}")
        out.append(FileRecord(path, size, sha))
    return tuple(out), target


def _size_and_sha256(f: dict, what: str) -> tuple[int, str]:
    """A file record's size (a whole number >= 0) and sha256 (64 hex digits), or a BundleError
    saying which of `what` is invalid."""
    size, sha = f.get("size"), f.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BundleError(f"{what} has an invalid size {size!r}")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise BundleError(f"{what} has an invalid sha256 {sha!r}")
    return size, sha


def _parse_entry(i: int, d: object) -> Entry:
    if not isinstance(d, dict):
        raise BundleError(f"manifest entry #{i} is not an object")
    name = f"manifest entry #{i} ({d.get('repo_id', '?')})"

    def need(key: str, typ: type) -> object:
        v = d.get(key)
        if not isinstance(v, typ):
            raise BundleError(f"{name}: field '{key}' is missing or not {typ.__name__}")
        return v

    kind, repo_type = need("kind", str), need("repo_type", str)
    if kind not in KINDS:
        raise BundleError(f"{name}: unknown kind {kind!r}")
    if repo_type not in REPO_TYPES:
        raise BundleError(f"{name}: unknown repo_type {repo_type!r}")
    repo_id = need("repo_id", str)
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise BundleError(f"{name}: invalid repo id {repo_id!r}")
    commit = need("commit", str)
    if not _HEX40.match(commit):
        raise BundleError(f"{name}: commit is not 40 hex digits: {commit!r}")
    revision = need("revision", str)
    why = revision_problem(revision, commit)
    if why:
        raise BundleError(f"{name}: invalid revision {revision!r} ({why})")
    files, paths = [], set()
    for j, f in enumerate(need("files", list)):
        if not isinstance(f, dict):
            raise BundleError(f"{name}: file #{j} is not an object")
        path = check_relpath(f.get("path"), f"{name}: file path")
        if path in paths:
            raise BundleError(f"{name}: duplicate file {path!r}")
        paths.add(path)
        size, sha = _size_and_sha256(f, f"{name}: file {path!r}")
        etag = f.get("etag")
        if not isinstance(etag, str) or not _ETAG.match(etag):
            raise BundleError(f"{name}: file {path!r} has an invalid etag {etag!r} "
                              "(expected the hub's blob id: 40 or 64 hex digits)")
        if len(etag) == 64 and etag != sha:
            raise BundleError(f"{name}: file {path!r} has a sha256 etag {etag[:12]}… that is not its sha256 {sha[:12]}…")
        files.append(FileRecord(path, size, sha, etag))
    clash = path_collision(paths)
    if clash:
        raise BundleError(f"{name}: {clash}")
    refs = d.get("refs") or []
    if not isinstance(refs, list):
        raise BundleError(f"{name}: 'refs' is not a list")
    for ref in refs:
        why = revision_problem(ref, commit) if isinstance(ref, str) else "not a string"
        if why:
            raise BundleError(f"{name}: invalid ref {ref!r} ({why})")
    requirements = d.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise BundleError(f"{name}: 'requirements' is not a list of strings")
    converted_from = d.get("converted_from") or {}
    if not isinstance(converted_from, dict) or (converted_from and (
            not isinstance(converted_from.get("commit"), str) or not _HEX40.match(converted_from["commit"])
            or not isinstance(converted_from.get("revision"), str) or not converted_from["revision"])):
        raise BundleError(f"{name}: 'converted_from' is not {{revision, commit}}: {converted_from!r}")
    splits = d.get("splits") or {}
    if not isinstance(splits, dict):
        raise BundleError(f"{name}: 'splits' is not an object")
    for cfg, by_split in splits.items():
        for split, info in (by_split or {}).items():
            if not isinstance(info, dict) or info.get("path") not in paths:
                raise BundleError(f"{name}: split {cfg}/{split} names no file of the entry")
    return Entry(
        kind=kind, repo_id=repo_id, repo_type=repo_type, revision=revision, commit=commit,
        files=tuple(files), source=str(d.get("source", "hub")),
        include=tuple(d.get("include") or ()), exclude=tuple(d.get("exclude") or ()),
        license=d.get("license"), gated=bool(d.get("gated", False)),
        trust_remote_code=bool(d.get("trust_remote_code", False)),
        dependencies=tuple(d.get("dependencies") or ()), splits=splits, refs=tuple(refs),
        converted_from=converted_from, requirements=tuple(requirements),
    )


def parse_entry(d: object, where: str) -> Entry:
    """One entry on its own (as the store index keeps it), validated as in a manifest."""
    try:
        return _parse_entry(0, d)
    except BundleError as exc:
        raise BundleError(f"{where}: {exc}") from None


def merge(old: Manifest | None, new_entries: list[Entry]) -> list[Entry]:
    """Entries of `old` not replaced by one of `new_entries` (same repo and commit), then the new.

    A kept entry whose revision (or one of its refs) now names another commit (`main` moved
    between two prefetches) keeps only what is still its own, pinned by its commit id if need be:
    a revision names one commit in a bundle, the newest."""
    replaced = {e.key for e in new_entries}
    moved = {(e.repo_type, e.repo_id, r) for e in new_entries for r in e.ref_names}

    def pinned(e: Entry) -> Entry:
        rev = e.commit if (e.repo_type, e.repo_id, e.revision) in moved else e.revision
        return replace(e, revision=rev, refs=tuple(r for r in e.refs if (e.repo_type, e.repo_id, r) not in moved))

    kept = [pinned(e) for e in (old.entries if old else ()) if e.key not in replaced]
    return kept + list(new_entries)
