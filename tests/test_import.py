"""`cachekit import`: plan, then all or nothing into the standard hub cache; `cachekit ls`."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest

from cachekit import manifest as mf
from tests.conftest import clean_env, run_cli, tree_state
from tests.test_verify import make_model_folder, objects_of


@pytest.fixture
def env(tmp_path):
    return clean_env(HF_HOME=str(tmp_path / "hf"))


def prefetch_local(tmp_path, env, name="small", out_name="bundle") -> Path:
    src = make_model_folder(tmp_path / f"src-{name}")
    out = tmp_path / out_name
    r = run_cli("cachekit", "prefetch", "--local", f"testorg/{name}={src}", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def prepopulated(tmp_path, env) -> Path:
    """A cache that already holds another model, so 'unchanged' is a real claim."""
    other = prefetch_local(tmp_path, env, "other", "other-bundle")
    assert run_cli("cachekit", "import", other, env=env).returncode == 0
    return Path(env["HF_HOME"])


def test_import_lays_out_the_hub_cache(tmp_path, env):
    bundle = prefetch_local(tmp_path, env)
    m = mf.parse((bundle / "manifest.json").read_text())
    e = m.entries[0]
    r = run_cli("cachekit", "import", bundle, env=env)
    assert r.returncode == 0, r.stderr
    assert "4 new" in r.stdout and "refs/main: (none) ->" in r.stdout
    repo = Path(env["HF_HOME"]) / "hub" / "models--testorg--small"
    assert (repo / "refs" / "main").read_text() == e.commit
    snap = repo / "snapshots" / e.commit
    for f in e.files:
        p = snap / f.path
        assert p.is_symlink() and p.resolve().parent == (repo / "blobs").resolve()
        assert p.read_bytes() == (tmp_path / "src-small" / f.path).read_bytes()
    assert len(list((repo / "blobs").iterdir())) == 3  # two identical files share a blob
    assert not list(Path(env["HF_HOME"]).rglob(".cachekit-staging-*")), "staging folders left behind"
    # A second import changes nothing.
    before = tree_state(Path(env["HF_HOME"]) / "hub")
    r = run_cli("cachekit", "import", bundle, env=env)
    assert r.returncode == 0 and "nothing to do" in r.stdout and "4 present" in r.stdout
    assert tree_state(Path(env["HF_HOME"]) / "hub") == before


def test_dry_run_changes_nothing(tmp_path, env, prepopulated):
    bundle = prefetch_local(tmp_path, env)
    before = tree_state(prepopulated)
    r = run_cli("cachekit", "import", bundle, "--dry-run", env=env)
    assert r.returncode == 0 and "4 new" in r.stdout and "dry run: nothing changed" in r.stdout
    assert tree_state(prepopulated) == before


def test_corrupt_object_refused_and_cache_unchanged(tmp_path, env, prepopulated):
    bundle = prefetch_local(tmp_path, env)
    weights = objects_of(bundle)["weights.bin"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    before = tree_state(prepopulated)
    r = run_cli("cachekit", "import", bundle, "--dry-run", env=env)
    assert r.returncode == 3 and "corrupt: weights.bin (sha256 " in r.stdout
    r = run_cli("cachekit", "import", bundle, env=env)
    assert r.returncode == 3
    assert r.stderr.startswith("error: bundle verification failed: corrupt: objects/")
    assert "[testorg/small/weights.bin] (sha256 " in r.stderr
    assert r.stderr == run_cli("cachekit", "verify", bundle, env=env).stderr  # one checker, one verdict
    assert tree_state(prepopulated) == before


def test_conflicting_cache_content_refused(tmp_path, env):
    bundle = prefetch_local(tmp_path, env)
    assert run_cli("cachekit", "import", bundle, env=env).returncode == 0
    hf = Path(env["HF_HOME"])
    e = mf.parse((bundle / "manifest.json").read_text()).entries[0]
    blob = next(hf.glob("hub/models--testorg--small/blobs/*"))
    target = hf / "hub/models--testorg--small/snapshots" / e.commit / "sub/notes.txt"
    real = target.resolve()
    real.chmod(0o644)
    real.write_text("tampered")
    before = tree_state(hf)
    r = run_cli("cachekit", "import", bundle, env=env)
    assert r.returncode == 3
    assert r.stderr.startswith("error: import refused: conflicting: testorg/small@")
    assert "sub/notes.txt" in r.stderr and "hint:" in r.stderr
    assert tree_state(hf) == before
    assert blob.exists()


def _limit_file_size(nbytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_write_failure_mid_import_leaves_cache_unchanged(tmp_path, env, prepopulated):
    """A write that fails part-way (here: a file-size limit, as a full disk would) undoes all."""
    bundle = prefetch_local(tmp_path, env)
    before = tree_state(prepopulated)
    r = run_cli("cachekit", "import", bundle, env=env, preexec_fn=_limit_file_size(100_000))
    assert r.returncode == 5, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: could not write ") and "file too large" in first
    assert tree_state(prepopulated) == before
    # and with room again, the same import succeeds
    assert run_cli("cachekit", "import", bundle, env=env).returncode == 0


def test_ls_lists_what_is_installed(tmp_path, env):
    r = run_cli("cachekit", "ls", env=env)
    assert r.returncode == 0 and "nothing installed" in r.stdout
    bundle = prefetch_local(tmp_path, env)
    run_cli("cachekit", "import", bundle, env=env)
    e = mf.parse((bundle / "manifest.json").read_text()).entries[0]
    r = run_cli("cachekit", "ls", env=env)
    assert "testorg/small" in r.stdout and e.commit[:12] in r.stdout and "main" in r.stdout
    rows = json.loads(run_cli("cachekit", "ls", "--json", env=env).stdout)
    assert rows[0]["repo_id"] == "testorg/small" and rows[0]["commit"] == e.commit
    assert rows[0]["kind"] == "model" and rows[0]["size"] == e.size and rows[0]["revisions"] == ["main"]


def test_corrupt_index_is_a_clear_error(tmp_path, env):
    store = Path(env["HF_HOME"]) / "cachekit"
    store.mkdir(parents=True)
    (store / "index.db").write_bytes(b"this is not sqlite" * 100)
    r = run_cli("cachekit", "ls", env=env)
    assert r.returncode == 3 and "is not a cachekit index" in r.stderr
    assert (store / "index.db").read_bytes() == b"this is not sqlite" * 100
    os.remove(store / "index.db")


def test_link_import_is_zero_copy(tmp_path, env):
    bundle = prefetch_local(tmp_path, env)
    r = run_cli("cachekit", "import", bundle, "--link", env=env)
    assert r.returncode == 0, r.stderr
    blobs = list((Path(env["HF_HOME"]) / "hub/models--testorg--small/blobs").iterdir())
    assert len(blobs) == 3 and all(b.stat().st_nlink == 2 for b in blobs)
    objects = {p.stat().st_ino for p in (bundle / "objects").rglob("*") if p.is_file()}
    assert {b.stat().st_ino for b in blobs} == objects


def test_link_import_still_refuses_corrupt_objects(tmp_path, env):
    bundle = prefetch_local(tmp_path, env)
    weights = objects_of(bundle)["weights.bin"]
    weights.write_bytes(b"x" * weights.stat().st_size)
    r = run_cli("cachekit", "import", bundle, "--link", env=env)
    assert r.returncode == 3 and "weights.bin" in r.stderr
    assert tree_state(Path(env["HF_HOME"])) == {}, "a refused import created something in the HF home"


def test_import_and_verify_list_the_same_problems(tmp_path, env):
    """Objects import copies (new) and objects it does not (already in the cache) are judged by
    the same checker: import's refusal lists exactly what verify lists."""
    first = prefetch_local(tmp_path, env)
    assert run_cli("cachekit", "import", first, env=env).returncode == 0
    src = tmp_path / "src-small"
    (src / "new.txt").write_text("a file the cache does not hold yet")
    second = tmp_path / "second"
    assert run_cli("cachekit", "prefetch", "--local", f"testorg/small={src}", "--out", second, env=env).returncode == 0
    objs = objects_of(second)
    for name in ("weights.bin", "new.txt"):  # one already in the cache, one new
        objs[name].write_bytes(b"\0" * objs[name].stat().st_size)
    hf = Path(env["HF_HOME"])
    before = tree_state(hf)
    verify = run_cli("cachekit", "verify", second, env=env)
    imp = run_cli("cachekit", "import", second, env=env)
    assert verify.returncode == imp.returncode == 3
    assert verify.stderr.startswith("error: 2 problems:") and imp.stderr == verify.stderr
    assert tree_state(hf) == before
