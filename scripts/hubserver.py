"""A local Hugging Face Hub server (stdlib only) for the tests (the ``hub_server`` fixture in
tests/conftest.py), the benchmarks and the cache crosscheck.

It speaks what the real ``huggingface_hub`` client and ``datasets`` use (see the brief
``hub-protocol.md``): repo info, tree, paths-info, refs, commits, and ``/resolve/`` HEAD/GET with ETag,
X-Repo-Commit, Range/206 and X-Error-Code errors. Point a client at it with ``HF_ENDPOINT=hub.url``, in a
subprocess (huggingface_hub reads the endpoint when it is imported).

    hub = HubServer().start()
    sha = hub.commit("testorg/tiny-model", {"config.json": b"{}", "model.safetensors": Path("w.bin")})
    hub.create_tag("testorg/tiny-model", "v1.0", sha)
    ...
    hub.stop()
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_EXTENSIONS = (".safetensors", ".bin", ".parquet", ".gguf", ".pt")
LFS_THRESHOLD = 1 << 20  # files of 1 MiB or more are stored as "LFS" files
CHUNK_SIZE = 1 << 16
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_TRUE = ("true", "True", "1")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

FileContent = bytes | bytearray | Path


def _iso(when: datetime) -> str:
    """Format a datetime the way the Hub does (``%Y-%m-%dT%H:%M:%S.%fZ``, milliseconds)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    """Git blob id of ``data``: ``sha1(b"blob <len>\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One file version: its content (bytes in memory, or a Path read on demand) and its hashes."""

    size: int
    git_oid: str  # git blob sha1 of the content, or of the LFS pointer file for LFS files
    lfs_sha256: str | None = None
    pointer_size: int = 0
    data: bytes | None = None
    path: Path | None = None

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: sha256 for LFS files, git blob sha1 otherwise."""
        return self.lfs_sha256 or self.git_oid

    def iter_bytes(self, start: int, end: int) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` in chunks (streamed from disk for Path-backed files)."""
        if self.data is not None:
            for pos in range(start, end, CHUNK_SIZE):
                yield self.data[pos : min(pos + CHUNK_SIZE, end)]
            return
        assert self.path is not None
        with self.path.open("rb") as fh:
            fh.seek(start)
            while start < end and (chunk := fh.read(min(CHUNK_SIZE, end - start))):
                start += len(chunk)
                yield chunk

    @classmethod
    def build(cls, name: str, content: FileContent) -> Blob:
        """Hash ``content`` (streaming Paths in chunks) and decide whether it is an LFS file."""
        data = bytes(content) if isinstance(content, (bytes, bytearray)) else None
        path = None if data is not None else Path(content)
        size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
        chunks = [data] if data is not None else cls(size=size, git_oid="", path=path).iter_bytes(0, size)
        sha1 = hashlib.sha1(b"blob %d\0" % size)
        sha256 = hashlib.sha256()
        for chunk in chunks:
            sha1.update(chunk)
            sha256.update(chunk)
        if size < LFS_THRESHOLD and not name.lower().endswith(LFS_EXTENSIONS):
            return cls(size=size, git_oid=sha1.hexdigest(), data=data, path=path)
        oid = sha256.hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()
        return cls(size, git_blob_sha1(pointer), oid, len(pointer), data, path)


@dataclass
class Commit:
    """A commit: its full tree (path -> Blob), parent and message."""

    sha: str
    parent: str | None
    tree: dict[str, Blob]
    message: str
    date: datetime


@dataclass
class Repo:
    """A repository: commits by sha, branches and tags (name -> sha), optional gating token."""

    repo_type: str
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    gated_token: str | None = None

    def resolve(self, rev: str) -> str | None:
        """Resolve a branch, tag, ``refs/heads/x``, ``refs/tags/x`` or full sha to a commit sha."""
        branch = self.branches.get(rev) or self.branches.get(rev.removeprefix("refs/heads/"))
        tag = self.tags.get(rev.removeprefix("refs/tags/"))
        return branch or tag or (rev if rev in self.commits else None)


class HubServer:
    """A local Hub serving repos built with :meth:`commit`, in a daemon thread on 127.0.0.1."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._drops: list[list] = []  # [path_suffix, nbytes, remaining_times]
        self._counter = 0
        self.bytes_per_second: float | None = None
        self.requests: list[tuple[str, str, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """The endpoint, ``http://127.0.0.1:PORT`` (never ``localhost``)."""
        assert self._server is not None, "HubServer.start() was not called"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    # -- repo building ---------------------------------------------------------------------------------
    def _resolve_rev(self, repo_id: str, repo_type: str, rev: str) -> tuple[Repo, str]:
        """The existing repo and the sha ``rev`` resolves to (KeyError otherwise); call under the lock."""
        repo = self._repos.get((repo_type, repo_id))
        sha = repo.resolve(rev) if repo is not None else None
        if repo is None or sha is None:
            raise KeyError(f"no revision {rev!r} in {repo_type} repo {repo_id!r}")
        return repo, sha

    def commit(self, repo_id: str, files: Mapping[str, FileContent], *, repo_type: str = "model",
               branch: str = "main", tag: str | None = None, message: str = "Update files",
               delete: Iterable[str] = ()) -> str:
        """Commit ``files`` (bytes or Paths) on ``branch``, creating repo and branch if needed; return the sha.

        The new tree is the branch's previous tree, plus ``files``, minus ``delete``.
        """
        if repo_type not in URL_PREFIX:
            raise ValueError(f"unknown repo_type {repo_type!r}")
        blobs = {name.strip("/"): Blob.build(name, content) for name, content in files.items()}
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), Repo(repo_type, repo_id))
            parent = repo.branches.get(branch)
            tree = dict(repo.commits[parent].tree) if parent else {}
            tree.update(blobs)
            for name in delete:
                tree.pop(name.strip("/"), None)
            self._counter += 1
            seed = f"{repo_type}/{repo_id}\0{parent}\0{message}\0{self._counter}\0"
            seed += "".join(f"{p}\0{b.etag}\0" for p, b in sorted(tree.items()))
            sha = hashlib.sha1(seed.encode()).hexdigest()
            date = _EPOCH + timedelta(minutes=self._counter)
            repo.commits[sha] = Commit(sha, parent, tree, message, date)
            repo.branches[branch] = sha
            if tag is not None:
                repo.tags[tag] = sha
        return sha

    def create_branch(self, repo_id: str, branch: str, from_rev: str = "main", repo_type: str = "model") -> str:
        """Create (or move) ``branch`` to the commit ``from_rev`` resolves to; return that sha."""
        with self._lock:
            repo, sha = self._resolve_rev(repo_id, repo_type, from_rev)
            repo.branches[branch] = sha
        return sha

    def create_tag(self, repo_id: str, tag: str, rev: str = "main", repo_type: str = "model") -> str:
        """Create (or move) ``tag`` to the commit ``rev`` resolves to; return that sha."""
        with self._lock:
            repo, sha = self._resolve_rev(repo_id, repo_type, rev)
            repo.tags[tag] = sha
        return sha

    def set_gated(self, repo_id: str, token: str | None = "hf_secret", repo_type: str = "model") -> None:
        """Gate file downloads: they need ``Authorization: Bearer <token>`` (``None`` ungates).

        Repo info, tree and refs stay public, as on the Hub."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise KeyError(f"no {repo_type} repo {repo_id!r} (commit to it first)")
            repo.gated_token = token

    # -- fault injection -------------------------------------------------------------------------------
    def drop_connection_after(self, path_suffix: str, nbytes: int, times: int = 1) -> None:
        """The next ``times`` GETs of a file whose (decoded) URL path ends with ``path_suffix`` send the
        headers and ``nbytes`` of body, then close the socket. A new rule for the same suffix replaces
        the old one (``times=0`` clears it)."""
        with self._lock:
            self._drops = [r for r in self._drops if r[0] != path_suffix] + [[path_suffix, nbytes, times]]

    def throttle(self, bytes_per_second: float | None) -> None:
        """Limit the speed of each file body (``None``: full speed)."""
        self.bytes_per_second = bytes_per_second

    def _take_drop(self, path: str) -> int | None:
        with self._lock:
            for rule in self._drops:
                if path.endswith(rule[0]) and rule[2] > 0:
                    rule[2] -= 1
                    return rule[1]
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))


def _entry(path: str, blob: Blob | None, last: Commit | None = None) -> dict:
    """A tree / paths-info entry for a file (``blob``) or a directory (``blob is None``)."""
    if blob is None:
        entry: dict = {"type": "directory", "oid": hashlib.sha1(f"tree {path}".encode()).hexdigest(), "path": path}
    else:
        entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs_sha256:
            entry["lfs"] = {"oid": blob.lfs_sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    if last is not None:
        entry["lastCommit"] = {"id": last.sha, "title": last.message.split("\n")[0], "date": _iso(last.date)}
    return entry


def _last_commit(repo: Repo, commit: Commit, path: str) -> Commit:
    """The oldest ancestor of ``commit`` with the same content at ``path`` (a file or a folder)."""

    def state(c: Commit) -> list[tuple[str, str]]:
        return sorted((p, b.etag) for p, b in c.tree.items() if p == path or p.startswith(path + "/"))

    mine, last = state(commit), commit
    while last.parent and state(repo.commits[last.parent]) == mine:
        last = repo.commits[last.parent]
    return last


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> half-open ``(start, end)``; None without a Range."""
    match = _RANGE_RE.match((header or "").strip())
    if not match or not (match[1] or match[2]):
        return None
    if not match[1]:
        return max(size - int(match[2]), 0), size
    return int(match[1]), min(int(match[2]) + 1, size) if match[2] else size


@dataclass
class _HubError(Exception):
    """An error answer: status, X-Error-Code and optional X-Repo-Commit."""

    status: int
    code: str | None
    message: str
    commit: str | None = None


class _Handler(BaseHTTPRequestHandler):
    """Routes Hub API and ``/resolve/`` requests to the :class:`HubServer` held by the server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.hub._log(self.command, self.path, code)
        super().send_response(code, message)

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client went away: nothing to report

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_GET

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: object) -> None:
        self._send(200, json.dumps(obj).encode())

    def _dispatch(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        segs = [unquote(s) for s in url.path.split("/")[1:]]  # revision and tree paths are quoted with safe=""
        try:
            with self.hub._lock:
                repos = dict(self.hub._repos)
            if segs[:1] == ["api"] and len(segs) > 2 and segs[1] in API_TYPES:
                repo, rest = self._find_repo(repos, API_TYPES[segs[1]], segs[2:])
                self._api(repo, rest, query, body)
            elif "resolve" in segs[1:4] and self.command != "POST":
                repo_type = {"datasets": "dataset", "spaces": "space"}.get(segs[0], "model")
                rest = segs if repo_type == "model" else segs[1:]
                if "resolve" not in rest[1:3] or len(rest) < rest.index("resolve", 1) + 3:
                    raise _HubError(404, None, "Not Found")
                i = rest.index("resolve", 1)
                repo, _ = self._find_repo(repos, repo_type, rest[:i])
                self._resolve(repo, rest[i + 1], "/".join(rest[i + 2 :]))
            else:
                raise _HubError(404, None, "Not Found")  # e.g. /api/agent-harnesses
        except _HubError as err:
            headers = {"X-Error-Message": err.message.encode("ascii", "backslashreplace").decode()}
            headers.update({"X-Error-Code": err.code} if err.code else {})
            headers.update({"X-Repo-Commit": err.commit} if err.commit else {})
            self._send(err.status, json.dumps({"error": err.message}).encode(), headers)

    @staticmethod
    def _find_repo(repos: dict[tuple[str, str], Repo], repo_type: str, segs: list[str]) -> tuple[Repo, list[str]]:
        """Match ``org/name`` (or a bare ``name``) at the start of ``segs``; else 401 RepoNotFound.

        huggingface_hub maps a bare 401 to RepositoryNotFoundError only for ``https://`` URLs, so the
        X-Error-Code header is what makes it work on ``http://127.0.0.1``.
        """
        for n in (2, 1):
            if len(segs) >= n and (repo := repos.get((repo_type, "/".join(segs[:n])))) is not None:
                return repo, segs[n:]
        raise _HubError(401, "RepoNotFound", f"Repository not found: {repo_type} {'/'.join(segs[:2])}")

    @staticmethod
    def _commit(repo: Repo, rev: str) -> Commit:
        if (sha := repo.resolve(rev)) is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo.commits[sha]

    # -- /api/{type}s/{repo}/... -----------------------------------------------------------------------
    def _api(self, repo: Repo, rest: list[str], query: dict[str, str], body: bytes) -> None:
        action, get = (rest[0] if rest else "revision"), self.command == "GET"
        if action in ("revision", "tree", "paths-info", "commits"):
            commit = self._commit(repo, ("/".join(rest[1:]) if action == "revision" else "/".join(rest[1:2])) or "main")
        if action == "revision" and get:
            self._json(self._info(repo, commit, query.get("blobs") in _TRUE))
        elif action == "tree" and get:
            path, recursive = "/".join(rest[2:]).strip("/"), query.get("recursive") in _TRUE
            dirs = _dirs(commit.tree)
            if path and path not in dirs:
                raise _HubError(404, "EntryNotFound", f"{path} does not exist on {commit.sha}", commit.sha)
            prefix = f"{path}/" if path else ""
            names = [p for p in sorted(dirs | set(commit.tree)) if p.startswith(prefix)]
            names = names if recursive else [p for p in names if "/" not in p[len(prefix) :]]
            self._json(self._entries(repo, commit, names, query.get("expand") in _TRUE))
        elif action == "paths-info" and self.command == "POST":
            form = parse_qs(body.decode())  # paths=a&paths=b%2Fc&expand=false
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1] in _TRUE
            known = _dirs(commit.tree) | set(commit.tree)
            self._json(self._entries(repo, commit, [p.strip("/") for p in paths if p.strip("/") in known], expand))
        elif action == "refs" and get:
            self._json(self._refs(repo, "include_prs" in query))
        elif action == "commits" and get:
            out, c = [], commit
            while c is not None:
                out.append({"id": c.sha, "title": c.message.split("\n")[0], "message": c.message,
                            "date": _iso(c.date), "authors": [{"user": "hubserver"}]})
                c = repo.commits.get(c.parent) if c.parent else None
            self._json(out)
        else:
            raise _HubError(404, None, "Not Found")

    @staticmethod
    def _entries(repo: Repo, commit: Commit, paths: list[str], expand: bool) -> list[dict]:
        """Tree entries for ``paths``; ``expand`` adds each one's ``lastCommit``."""
        return [_entry(p, commit.tree.get(p), _last_commit(repo, commit, p) if expand else None) for p in paths]

    @staticmethod
    def _info(repo: Repo, commit: Commit, blobs: bool) -> dict:
        """Repo info at ``commit``; ``blobs`` adds size, blobId and lfs to each sibling."""
        siblings = []
        for path, blob in sorted(commit.tree.items()):
            sib: dict = {"rfilename": path}
            if blobs:
                sib.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs_sha256:
                    sib["lfs"] = {"size": blob.size, "sha256": blob.lfs_sha256, "pointerSize": blob.pointer_size}
            siblings.append(sib)
        created = min(c.date for c in repo.commits.values())
        return {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.sha, "lastModified": _iso(commit.date),
                "createdAt": _iso(created), "private": False, "gated": "manual" if repo.gated_token else False,
                "disabled": False, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings}

    @staticmethod
    def _refs(repo: Repo, include_prs: bool) -> dict:
        """Branches, tags, and ``refs/convert/*`` branches as converts."""
        out: dict = {"branches": [], "converts": [], "tags": []}
        for name, sha in sorted(repo.branches.items()):
            if name.startswith("refs/convert/"):
                out["converts"].append({"name": name.split("/", 2)[2], "ref": name, "targetCommit": sha})
            else:
                out["branches"].append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha})
        out["tags"] = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(repo.tags.items())]
        if include_prs:
            out["pullRequests"] = []
        return out

    # -- /{prefix}{repo}/resolve/{rev}/{path} ----------------------------------------------------------
    def _resolve(self, repo: Repo, rev: str, path: str) -> None:
        """HEAD/GET of a file: gating, revision, Range, then the body (throttled or cut if asked)."""
        if repo.gated_token is not None and (auth := self.headers.get("Authorization")) != f"Bearer {repo.gated_token}":
            # Like the Hub: 401 when unauthenticated, 403 with a token that has no access.
            raise _HubError(401 if auth is None else 403, "GatedRepo", f"Access to {repo.repo_id} is restricted.")
        commit = self._commit(repo, rev)
        if (blob := commit.tree.get(path)) is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {commit.sha}", commit.sha)
        requested = _parse_range(self.headers.get("Range"), blob.size)  # an unparsable Range is ignored
        start, end = requested or (0, blob.size)
        if start >= end:
            raise _HubError(416, None, f"Range not satisfiable (size {blob.size})")
        partial = requested is not None
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", f'"{blob.etag}"')
        self.send_header("X-Repo-Commit", commit.sha)
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut_after = self.hub._take_drop(unquote(urlsplit(self.path).path))
        sent = 0
        for chunk in blob.iter_bytes(start, end):
            if cut_after is not None and sent + len(chunk) >= cut_after:
                self.wfile.write(chunk[: cut_after - sent])
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a body shorter than announced
                return
            bps = self.hub.bytes_per_second
            step = max(1, int(bps / 20)) if bps else len(chunk)
            for pos in range(0, len(chunk), step):
                self.wfile.write(chunk[pos : pos + step])
                if bps:
                    time.sleep(len(chunk[pos : pos + step]) / bps)
            sent += len(chunk)


def _dirs(tree: Mapping[str, Blob]) -> set[str]:
    """Every folder that holds a file of ``tree``."""
    return {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
