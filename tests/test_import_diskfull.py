"""Disk full at every step of `cachekit import` (blobs, snapshot links, refs, lock files, folders,
the store index and its WAL): exit 5, a one-line message naming the file, never advice to
delete or move the index, and the HF home byte for byte as it was, folders included.

Two ways to fill the disk, swept over sizes until the import succeeds:
- a file-size limit (RLIMIT_FSIZE, any user): fails the first file that grows past it;
- a tiny tmpfs (root only: mount): fails on blocks, and with few inodes on folders, links and
  lock files too.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path

import pytest

from tests.conftest import clean_env, run_cli, tree_state

PAGE = 4096


def small_model(root: Path) -> Path:
    """A model folder of small files (each under one page), so the sweep reaches the index."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": {f"t{i}": i for i in range(150)}}))
    (root / "sub").mkdir()
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 12)
    return root


def bundle_of(tmp_path: Path, env: dict, name: str, dataset: bool = False) -> Path:
    out = tmp_path / f"bundle-{name}"
    src = small_model(tmp_path / f"src-{name}")
    extra = []
    if dataset:  # a dataset too: the store, the hub layout and the datasets Arrow cache
        data = tmp_path / f"data-{name}"
        data.mkdir()
        # repetitive rows: a small Parquet file, a large Arrow cache (the sweep reaches both)
        (data / "train.jsonl").write_text("".join(json.dumps({"q": "x" * 60, "a": 1}) + "\n" for i in range(400)))
        extra = ["--local", f"dataset:testorg/{name}-data={data}"]
    r = run_cli("cachekit", "prefetch", "--local", f"testorg/{name}={src}", *extra, "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    return out


def outcome(r, hf: Path, before: dict) -> str:
    """'done', or the one-line error of a failed import after checking everything it promises."""
    if r.returncode == 0:
        return "done"
    lines = r.stderr.splitlines()
    assert r.returncode == 5, r.stderr
    assert len(lines) == 2 and lines[0].startswith("error: could not write /") and lines[1].startswith("hint: "), r.stderr
    low = r.stderr.lower()
    assert not any(w in low for w in ("delete", "move", "remov", "rebuild", "traceback")), r.stderr
    assert tree_state(hf) == before, f"a failed import changed the HF home: {lines[0]}"
    return lines[0]


def _fsize(nbytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


@pytest.mark.parametrize("home", ["absent", "populated"])
def test_file_size_limit_at_every_step(tmp_path, home):
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    hf = Path(env["HF_HOME"])
    if home == "populated":
        assert run_cli("cachekit", "import", bundle_of(tmp_path, env, "other"), env=env).returncode == 0
    bundle = bundle_of(tmp_path, env, "small")
    before = tree_state(hf)
    seen = []
    for limit in (1, 100, 1000, 2 * PAGE, 4 * PAGE, 8 * PAGE, 16 * PAGE, 64 * PAGE, 1 << 24):
        seen.append(outcome(run_cli("cachekit", "import", bundle, env=env, preexec_fn=_fsize(limit)), hf, before))
        if seen[-1] == "done":
            break
    assert seen[-1] == "done", seen
    assert any("/blobs/" in s and "file too large" in s for s in seen), seen
    assert any("index.db" in s for s in seen), seen  # the store index (its WAL or shared memory)


def test_file_size_limit_with_a_dataset(tmp_path):
    """The datasets Arrow cache is built before the commit and undone with the rest."""
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    hf = Path(env["HF_HOME"])
    bundle = bundle_of(tmp_path, env, "small", dataset=True)
    before = tree_state(hf)
    seen = []
    for limit in (100, 1000, PAGE, 2 * PAGE, 16 * PAGE, 64 * PAGE, 1 << 24):
        seen.append(outcome(run_cli("cachekit", "import", bundle, env=env, preexec_fn=_fsize(limit)), hf, before))
        if seen[-1] == "done":
            break
    assert seen[-1] == "done", seen
    assert any(f"{hf}/datasets/" in s for s in seen), seen


def _can_mount(where: Path) -> bool:
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


@pytest.fixture
def tmpfs_home(tmp_path):
    hf = tmp_path / "hf"
    if not _can_mount(hf):
        pytest.skip("mounting a tmpfs needs root (the file-size-limit test covers disk full without it)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=4096", "tmpfs", str(hf)], check=True)
    yield hf
    subprocess.run(["umount", "-l", str(hf)], check=False)


def _remount(hf: Path, **opts) -> None:
    o = ",".join(f"{k}={v}" for k, v in opts.items())
    subprocess.run(["mount", "-o", f"remount,{o}", str(hf)], check=True, capture_output=True)


@pytest.mark.parametrize("home", ["empty", "populated"])
def test_full_tmpfs_at_every_step(tmp_path, tmpfs_home, home):
    hf = tmpfs_home
    env = clean_env(HF_HOME=str(hf))
    if home == "populated":
        assert run_cli("cachekit", "import", bundle_of(tmp_path, env, "other"), env=env).returncode == 0
    bundle = bundle_of(tmp_path, env, "small")
    before = tree_state(hf)
    st = os.statvfs(hf)
    used_bytes = (st.f_blocks - st.f_bfree) * st.f_frsize
    used_inodes = st.f_files - st.f_ffree
    seen = []
    for pages in range(1, 64):  # out of blocks (size=0 would mean no limit): blobs, staging copies, refs, the index and its WAL
        _remount(hf, size=used_bytes + pages * PAGE, nr_inodes=4096)
        seen.append(outcome(run_cli("cachekit", "import", bundle, env=env), hf, before))
        if seen[-1] == "done":
            break
    assert seen[-1] == "done", seen
    assert any("no space left on device" in s for s in seen), seen
    assert any("index.db" in s for s in seen), seen
    # Undo the successful import (a fresh tmpfs in the same state), then run out of inodes:
    # folders, snapshot links, ref files and lock files.
    subprocess.run(["umount", str(hf)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=4096", "tmpfs", str(hf)], check=True)
    if home == "populated":
        assert run_cli("cachekit", "import", bundle_of(tmp_path, env, "other2"), env=env).returncode == 0
    before = tree_state(hf)
    st = os.statvfs(hf)
    used_inodes = st.f_files - st.f_ffree
    inodes_seen = []
    for extra in range(1, 60):  # nr_inodes=0 would mean no limit
        _remount(hf, size="8m", nr_inodes=used_inodes + extra)
        inodes_seen.append(outcome(run_cli("cachekit", "import", bundle, env=env), hf, before))
        if inodes_seen[-1] == "done":
            break
    assert inodes_seen[-1] == "done", inodes_seen
    assert len({s.split(": ", 2)[1].rsplit("/", 1)[0] for s in inodes_seen[:-1]}) >= 3, inodes_seen  # many places
