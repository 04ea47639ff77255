"""Tests proving that scripts/hubserver.py speaks enough of the Hub protocol for the real client.

Every client call runs in a subprocess: huggingface_hub and datasets read HF_ENDPOINT at import time, so the
pytest process never imports them.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scripts.hubserver import HubServer, git_blob_sha1

MODEL = "testorg/tiny-model"
CONFIG_V1 = b'{"model_type": "tiny", "v": 1}'
CONFIG_V2 = b'{"model_type": "tiny", "v": 2}'
WEIGHTS = bytes(range(256)) * 40  # 10 KiB, LFS by extension


NETGUARD = Path(__file__).parent / "netguard"  # the project's loopback-only socket guard, if present


def client_env(hub: HubServer, tmp_path: Path, token: str | None = None) -> dict[str, str]:
    """Environment for a client subprocess: this hub, a private HF home, no HF settings from the host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if NETGUARD.is_dir():
        env["PYTHONPATH"] = str(NETGUARD)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_client(hub: HubServer, tmp_path: Path, code: str, token: str | None = None, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter pointed at ``hub``; it must print one JSON object as its last line."""
    env = client_env(hub, tmp_path, token)
    proc = subprocess.run(
        [sys.executable, "-c", CATCH + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Prepended to every client script: calls a function and reports the exception class names it raised.
CATCH = """
import json
def catch(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return [c.__name__ for c in type(e).__mro__] + [str(getattr(getattr(e, "response", None), "status_code", ""))]
    return None
"""


@pytest.fixture
def model_repo(hub_server: HubServer) -> dict[str, str]:
    """Two commits on main (tag v1.0 on the first) and a dev branch with one more commit."""
    c1 = hub_server.commit(
        MODEL,
        {"config.json": CONFIG_V1, "model.safetensors": WEIGHTS, "README.md": b"# tiny\n", "sub/extra.json": b"{}"},
        tag="v1.0",
        message="first",
    )
    c2 = hub_server.commit(MODEL, {"config.json": CONFIG_V2}, delete=["README.md"], message="second")
    hub_server.create_branch(MODEL, "dev", from_rev=c1)
    c3 = hub_server.commit(MODEL, {"dev.json": b"[]"}, branch="dev", message="dev work")
    return {"c1": c1, "c2": c2, "c3": c3}


def test_snapshot_download_branch_tag_sha(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    c1, c2, c3 = model_repo["c1"], model_repo["c2"], model_repo["c3"]
    out = run_client(hub_server, tmp_path, f"""
        import os
        from huggingface_hub import snapshot_download
        res = {{}}
        for rev in ("main", "v1.0", "{c1}", "dev"):
            folder = snapshot_download("{MODEL}", revision=rev, allow_patterns=["*.json"])
            files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
            res[rev] = [os.path.basename(folder), files, open(os.path.join(folder, "config.json")).read()]
        print(json.dumps(res))
    """)
    assert out["main"] == [c2, ["config.json", "sub/extra.json"], CONFIG_V2.decode()]
    assert out["v1.0"] == [c1, ["config.json", "sub/extra.json"], CONFIG_V1.decode()]
    assert out[c1] == out["v1.0"]
    assert out["dev"] == [c3, ["config.json", "dev.json", "sub/extra.json"], CONFIG_V1.decode()]
    cache = tmp_path / "hf" / "hub" / "models--testorg--tiny-model"
    assert (cache / "refs" / "main").read_text() == c2
    assert (cache / "refs" / "v1.0").read_text() == c1
    assert (cache / "blobs" / git_blob_sha1(CONFIG_V2)).read_bytes() == CONFIG_V2
    assert (cache / "trees" / f"{c1}.json").exists()
    assert not list(cache.glob("snapshots/*/model.safetensors"))  # allow_patterns respected
    paths = [p for m, p, s in hub_server.requests if m == "GET" and s == 200]
    assert f"/api/models/{MODEL}/revision/v1.0" in paths
    assert f"/api/models/{MODEL}/revision/{c1}" not in paths  # a full sha is not resolved
    assert f"/api/models/{MODEL}/tree/{c1}?recursive=true&expand=false" in paths


def test_hf_hub_download_model_info_and_listing(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    out = run_client(hub_server, tmp_path, f"""
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        path = hf_hub_download("{MODEL}", "model.safetensors")
        info = api.model_info("{MODEL}", files_metadata=True)
        refs = api.list_repo_refs("{MODEL}")
        print(json.dumps({{
            "path": path, "data": open(path, "rb").read().hex(), "sha": info.sha, "gated": info.gated,
            "siblings": {{s.rfilename: [s.size, s.blob_id, s.lfs.sha256 if s.lfs else None] for s in info.siblings}},
            "files": api.list_repo_files("{MODEL}", revision="v1.0"),
            "top": sorted(e.path for e in api.list_repo_tree("{MODEL}", expand=True)),
            "sub": [[e.path, e.last_commit.title] for e in api.list_repo_tree("{MODEL}", "sub", expand=True)],
            "info": [e.path for e in api.get_paths_info("{MODEL}", ["config.json", "sub", "nope"], revision="v1.0")],
            "branches": sorted((r.name, r.target_commit) for r in refs.branches),
            "tags": [(r.name, r.target_commit) for r in refs.tags],
            "commits": [c.title for c in api.list_repo_commits("{MODEL}")],
            "exists": [api.file_exists("{MODEL}", "config.json"), api.file_exists("{MODEL}", "README.md")],
        }}))
    """)
    sha256 = hashlib.sha256(WEIGHTS).hexdigest()
    assert bytes.fromhex(out["data"]) == WEIGHTS
    assert out["path"].endswith(f"snapshots/{model_repo['c2']}/model.safetensors")
    blob = tmp_path / "hf" / "hub" / "models--testorg--tiny-model" / "blobs" / sha256
    assert blob.read_bytes() == WEIGHTS  # LFS files are cached under their sha256
    assert out["sha"] == model_repo["c2"] and out["gated"] is False
    assert out["siblings"]["model.safetensors"] == [len(WEIGHTS), out["siblings"]["model.safetensors"][1], sha256]
    assert out["siblings"]["config.json"] == [len(CONFIG_V2), git_blob_sha1(CONFIG_V2), None]
    assert sorted(out["files"]) == ["README.md", "config.json", "model.safetensors", "sub/extra.json"]
    assert out["top"] == ["config.json", "model.safetensors", "sub"]
    assert out["sub"] == [["sub/extra.json", "first"]]
    assert out["info"] == ["config.json", "sub"]
    assert out["branches"] == [["dev", model_repo["c3"]], ["main", model_repo["c2"]]]
    assert out["tags"] == [["v1.0", model_repo["c1"]]]
    assert out["commits"] == ["second", "first"]
    assert out["exists"] == [True, False]
    heads = [r for r in hub_server.requests if r[0] == "HEAD"]
    assert ("HEAD", f"/{MODEL}/resolve/main/model.safetensors", 200) in heads


def test_dataset_load_dataset_and_streaming(hub_server: HubServer, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(n: int, offset: int) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.table({"idx": list(range(offset, offset + n)), "text": [f"row {i}" for i in range(n)]}), buf)
        return buf.getvalue()

    repo = "testorg/tiny-dataset"
    hub_server.commit(repo, {
        "README.md": b"---\nlicense: mit\n---\n# tiny dataset\n",
        "data/train-00000-of-00001.parquet": parquet(10, 0),
        "data/test-00000-of-00001.parquet": parquet(4, 100),
    }, repo_type="dataset")
    out = run_client(hub_server, tmp_path, f"""
        import datasets
        ds = datasets.load_dataset("{repo}")
        stream = datasets.load_dataset("{repo}", split="test", streaming=True)
        print(json.dumps({{"splits": {{k: v.num_rows for k, v in ds.items()}}, "train": list(ds["train"]["idx"]),
                          "stream": [r["idx"] for r in stream]}}))
    """)
    assert out == {"splits": {"train": 10, "test": 4}, "train": list(range(10)), "stream": [100, 101, 102, 103]}
    statuses = {(m, p.split("?")[0], s) for m, p, s in hub_server.requests}
    assert any(m == "GET" and p.endswith("train-00000-of-00001.parquet") and s == 200 for m, p, s in statuses)
    assert any(m == "GET" and p.endswith("test-00000-of-00001.parquet") and s == 206 for m, p, s in statuses)


def test_space_download(hub_server: HubServer, tmp_path: Path) -> None:
    sha = hub_server.commit("testorg/my-metric", {"app.py": b"print('hi')\n", "my_metric.py": b"X = 1\n"},
                            repo_type="space")
    out = run_client(hub_server, tmp_path, """
        import os
        from huggingface_hub import hf_hub_download, snapshot_download
        folder = snapshot_download("testorg/my-metric", repo_type="space")
        path = hf_hub_download("testorg/my-metric", "my_metric.py", repo_type="space")
        print(json.dumps({"folder": folder, "files": sorted(os.listdir(folder)), "data": open(path).read()}))
    """)
    assert out["folder"].endswith(f"spaces--testorg--my-metric/snapshots/{sha}")
    assert out["files"] == ["app.py", "my_metric.py"] and out["data"] == "X = 1\n"
    assert ("GET", "/api/spaces/testorg/my-metric/revision/main", 200) in hub_server.requests


def test_error_mapping(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    out = run_client(hub_server, tmp_path, f"""
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        print(json.dumps({{
            "repo_file": catch(hf_hub_download, "testorg/nope", "config.json"),
            "repo_info": catch(HfApi().model_info, "testorg/nope"),
            "repo_snapshot": catch(snapshot_download, "testorg/nope"),
            "dataset": catch(hf_hub_download, "{MODEL}", "config.json", repo_type="dataset"),
            "rev_file": catch(hf_hub_download, "{MODEL}", "config.json", revision="nope"),
            "rev_snapshot": catch(snapshot_download, "{MODEL}", revision="v9"),
            "rev_sha": catch(hf_hub_download, "{MODEL}", "config.json", revision="0" * 40),
            "entry": catch(hf_hub_download, "{MODEL}", "missing.bin"),
            "entry_dir": catch(lambda: list(HfApi().list_repo_tree("{MODEL}", "nodir"))),
        }}))
    """)
    for key in ("repo_file", "repo_info", "repo_snapshot", "dataset"):
        assert "RepositoryNotFoundError" in out[key], (key, out[key])
    assert out["repo_info"][-1] == "401"
    for key in ("rev_file", "rev_snapshot", "rev_sha"):
        assert "RevisionNotFoundError" in out[key], (key, out[key])
    assert "RemoteEntryNotFoundError" in out["entry"] and "EntryNotFoundError" in out["entry"]
    assert out["entry"][-1] == "404"
    assert "RemoteEntryNotFoundError" in out["entry_dir"]  # tree of a missing folder
    no_exist = tmp_path / "hf" / "hub" / "models--testorg--tiny-model" / ".no_exist" / model_repo["c2"]
    assert (no_exist / "missing.bin").exists()  # thanks to X-Repo-Commit on the 404


def test_gated_repo(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    hub_server.set_gated(MODEL, token="hf_secret")
    code = f"""
        from huggingface_hub import HfApi, hf_hub_download
        print(json.dumps({{"info": HfApi().model_info("{MODEL}").gated,
                          "wrong": catch(hf_hub_download, "{MODEL}", "config.json", token="hf_wrong"),
                          "default": catch(hf_hub_download, "{MODEL}", "config.json")}}))
    """
    anon = run_client(hub_server, tmp_path / "anon", code)
    assert anon["info"] == "manual"
    assert "GatedRepoError" in anon["default"] and anon["default"][-1] == "401"
    assert "GatedRepoError" in anon["wrong"] and anon["wrong"][-1] == "403"
    authed = run_client(hub_server, tmp_path / "authed", code, token="hf_secret")
    assert authed["default"] is None and "GatedRepoError" in authed["wrong"]


def _raw(hub: HubServer, method: str, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=10)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


def test_head_and_range_requests(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))  # Path-backed LFS file, streamed from disk
    sha = hub_server.commit(MODEL, {"big.bin": big, "sub dir/ä b.txt": b"hello"})
    data = big.read_bytes()
    head = _raw(hub_server, "HEAD", f"/{MODEL}/resolve/main/big.bin")
    assert head.status == 200 and head.read() == b""
    assert head.headers.get_all("Content-Length") == [str(len(data))]
    assert head.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert head.headers["X-Repo-Commit"] == sha
    resp = _raw(hub_server, "GET", f"/{MODEL}/resolve/{sha}/big.bin", {"Range": "bytes=1000-"})
    assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert resp.read() == data[1000:]
    resp = _raw(hub_server, "GET", f"/{MODEL}/resolve/v1.0/config.json", {"Range": "bytes=2-5"})
    assert resp.status == 206 and resp.read() == CONFIG_V1[2:6]
    assert _raw(hub_server, "GET", f"/{MODEL}/resolve/main/big.bin", {"Range": "bytes=9999999-"}).status == 416
    resp = _raw(hub_server, "GET", f"/{MODEL}/resolve/main/sub%20dir/%C3%A4%20b.txt")
    assert resp.status == 200 and resp.read() == b"hello"
    hub_server.create_branch(MODEL, "refs/convert/parquet", from_rev="v1.0")
    resp = _raw(hub_server, "GET", f"/api/models/{MODEL}/revision/refs%2Fconvert%2Fparquet")
    assert json.loads(resp.read())["sha"] == model_repo["c1"]
    resp = _raw(hub_server, "HEAD", f"/{MODEL}/resolve/main/missing.txt")
    assert (resp.status, resp.headers["X-Error-Code"], resp.headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    resp = _raw(hub_server, "GET", "/api/models/testorg/nope")
    assert (resp.status, resp.headers["X-Error-Code"]) == (401, "RepoNotFound")
    assert _raw(hub_server, "GET", "/api/agent-harnesses").status == 404  # telemetry off: the client skips it


def test_connection_drop_is_resumed_with_range(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    # The client reads the body in 10 MiB chunks (DOWNLOAD_CHUNK_SIZE) and only keeps whole chunks, so a cut
    # after 10.5 MiB is resumed with "Range: bytes=10485760-", while an earlier cut restarts from byte 0.
    payload = os.urandom(12 << 20)
    hub_server.commit(MODEL, {"weights.bin": payload, "early.bin": payload[: 1 << 20]})
    hub_server.drop_connection_after("weights.bin", 21 << 19, times=1)
    hub_server.drop_connection_after("early.bin", 300_000, times=1)
    out = run_client(hub_server, tmp_path, """
        import hashlib
        from huggingface_hub import hf_hub_download
        sums = {f: hashlib.sha256(open(hf_hub_download("testorg/tiny-model", f), "rb").read()).hexdigest()
                for f in ("weights.bin", "early.bin")}
        print(json.dumps(sums))
    """)
    assert out == {"weights.bin": hashlib.sha256(payload).hexdigest(),
                   "early.bin": hashlib.sha256(payload[: 1 << 20]).hexdigest()}
    assert [s for m, p, s in hub_server.requests if m == "GET" and p.endswith("weights.bin")] == [200, 206]
    assert [s for m, p, s in hub_server.requests if m == "GET" and p.endswith("early.bin")] == [200, 200]


def test_connection_drop_without_progress_fails(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    hub_server.commit(MODEL, {"weights.bin": os.urandom(200_000)})
    hub_server.drop_connection_after("weights.bin", 0, times=100)
    out = run_client(hub_server, tmp_path, """
        from huggingface_hub import hf_hub_download
        print(json.dumps({"err": catch(hf_hub_download, "testorg/tiny-model", "weights.bin")}))
    """)
    assert "RemoteProtocolError" in out["err"]
    gets = [s for m, p, s in hub_server.requests if m == "GET" and p.endswith("weights.bin")]
    assert len(gets) == 6  # first try + 5 retries, as no byte ever arrives
    cache = tmp_path / "hf" / "hub" / "models--testorg--tiny-model"
    assert not [p for p in cache.glob("blobs/*") if not p.name.endswith(".incomplete")]


def test_throttle_lets_a_download_be_killed(hub_server: HubServer, model_repo: dict, tmp_path: Path) -> None:
    payload = os.urandom(1 << 20)
    hub_server.commit(MODEL, {"slow.bin": payload})
    hub_server.throttle(400_000)
    code = "from huggingface_hub import hf_hub_download; hf_hub_download('testorg/tiny-model', 'slow.bin')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=client_env(hub_server, tmp_path))
    deadline = time.monotonic() + 30
    while ("GET", f"/{MODEL}/resolve/main/slow.bin", 200) not in hub_server.requests:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None  # still downloading (1 MiB at 400 kB/s)
    proc.kill()
    proc.wait()
    blobs = tmp_path / "hf" / "hub" / "models--testorg--tiny-model" / "blobs"
    assert [p.suffix for p in blobs.iterdir()] == [".incomplete"]  # a per-process temp file is left behind
    hub_server.throttle(None)
    out = run_client(hub_server, tmp_path, """
        import hashlib
        from huggingface_hub import hf_hub_download
        path = hf_hub_download("testorg/tiny-model", "slow.bin")
        print(json.dumps({"sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}))
    """)
    assert out["sha256"] == hashlib.sha256(payload).hexdigest()
    # huggingface_hub 2.4 downloads into a per-process temp file: a new process restarts from byte 0.
    gets = [s for m, p, s in hub_server.requests if m == "GET" and p.endswith("slow.bin")]
    assert gets == [200, 200]
