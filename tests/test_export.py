"""`cachekit export`: a cache filled by the real client becomes a verifiable bundle, offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, arc_rows, clean_env, run_cli
from tests.test_prefetch import manifest_of, small_model

FILL = """
import sys
from huggingface_hub import snapshot_download
snapshot_download("testorg/small")
snapshot_download("allenai/ai2_arc", repo_type="dataset")
"""


def test_export_a_filled_cache(hub_server, tmp_path, arc_parquet_repo):
    commit = small_model(hub_server)
    hub_server.commit("allenai/ai2_arc", arc_parquet_repo, repo_type="dataset")
    filled = clean_env(HF_HOME=str(tmp_path / "filled"), HF_ENDPOINT=hub_server.url)
    r = subprocess.run([sys.executable, "-c", FILL], env=filled, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    offline = dict(filled, HF_HUB_OFFLINE="1")
    del offline["HF_ENDPOINT"]
    out = tmp_path / "exported.tar"
    r = run_cli("cachekit", "export", "testorg/small", "dataset:allenai/ai2_arc", "--out", out, env=offline)
    assert r.returncode == 0, r.stderr
    entries = {e.repo_id: e for e in manifest_of(out).entries}
    assert entries["testorg/small"].commit == commit and entries["testorg/small"].source == "cache"
    assert len(entries["testorg/small"].files) == 4
    assert entries["allenai/ai2_arc"].splits["ARC-Easy"]["validation"]["rows"] == len(arc_rows())

    fresh = clean_env(HF_HOME=str(tmp_path / "fresh"), HF_HUB_OFFLINE="1")
    assert run_cli("cachekit", "verify", out, env=fresh).returncode == 0
    assert run_cli("cachekit", "import", out, env=fresh).returncode == 0
    src = Path(filled["HF_HOME"]) / "hub/models--testorg--small/snapshots" / commit
    dst = Path(fresh["HF_HOME"]) / "hub/models--testorg--small/snapshots" / commit
    for p in src.rglob("*"):
        if p.is_file():
            assert (dst / p.relative_to(src)).read_bytes() == p.read_bytes()
    # blob names are kept (the hub's etags), so the client would recognise them online too
    assert sorted(x.name for x in (src.parent.parent / "blobs").iterdir()) == \
        sorted(x.name for x in (dst.parent.parent / "blobs").iterdir())


def test_export_unknown_repo_or_revision(tmp_path):
    env = clean_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = tmp_path / "x.tar"
    r = run_cli("cachekit", "export", "testorg/none", "--out", out, env=env)
    assert r.returncode == 4 and "model testorg/none is not in the cache" in r.stderr
    repo = Path(env["HF_HOME"]) / "hub/models--testorg--one"
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("b" * 40)).mkdir(parents=True)
    r = run_cli("cachekit", "export", "testorg/one", "--out", out, env=env)
    assert r.returncode == 4 and "revision 'main' of testorg/one is not in the cache" in r.stderr
    assert "cached commits: aaaaaaaaaaaa, bbbbbbbbbbbb" in r.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_export_what_ls_lists_reimports_identically(hub_server, tmp_path, arc_parquet_repo):
    """Every kind `cachekit ls` lists (a dataset included) exports into a bundle that verifies and,
    imported into a fresh home, gives the same entries and the same files."""
    small_model(hub_server, tag="v1")
    hub_server.commit("allenai/ai2_arc", arc_parquet_repo, repo_type="dataset")
    hub_server.commit("evaluate-metric/accuracy", {"accuracy.py": b"# metric\n", "requirements.txt": b"scikit-learn\n"},
                      repo_type="space")
    online = clean_env(HF_HOME=str(tmp_path / "online"), HF_ENDPOINT=hub_server.url)
    first = tmp_path / "first"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/small@v1", "--dataset", "allenai/ai2_arc",
                "--space", "evaluate-metric/accuracy", "--out", first, env=online)
    assert r.returncode == 0, r.stderr
    a = clean_env(HF_HOME=str(tmp_path / "a"), HF_HUB_OFFLINE="1")
    assert run_cli("cachekit", "import", first, env=a).returncode == 0
    listed = json.loads(run_cli("cachekit", "ls", "--json", env=a).stdout)
    assert sorted(i["kind"] for i in listed) == ["dataset", "metric", "model"]
    specs = [f"{'space' if i['repo_type'] == 'space' else i['repo_type']}:{i['repo_id']}" for i in listed]

    out = tmp_path / "exported.tar"
    r = run_cli("cachekit", "export", *specs, "--out", out, env=a)
    assert r.returncode == 0, r.stderr
    assert run_cli("cachekit", "verify", out, env=a).returncode == 0
    assert sorted(manifest_of(out).entries, key=lambda e: e.repo_id) == \
        sorted(manifest_of(first).entries, key=lambda e: e.repo_id)
    b = clean_env(HF_HOME=str(tmp_path / "b"), HF_HUB_OFFLINE="1")
    r = run_cli("cachekit", "import", out, env=b)
    assert r.returncode == 0, r.stderr
    for sub in ("hub", "cachekit/datasets", "datasets"):
        assert _contents(Path(a["HF_HOME"]) / sub) == _contents(Path(b["HF_HOME"]) / sub), sub


def _contents(root: Path) -> dict[str, bytes]:
    """Files by path and content (links followed), without lock files."""
    skip = (".lock", "dataset_info.json")  # dataset_info.json records its own folder's path
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(skip)}
