"""The whole journey: hub -> prefetch -> .tar -> verify -> import into a fresh HF home -> load by
repo id and by commit with HF_HUB_OFFLINE=1 -> same logits as the original model, same rows as
the source data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cachekit import manifest as mf
from tests.conftest import ROOT, arc_rows, clean_env, commit_folder, run_cli

CHECK = r"""
import json, sys, torch, pyarrow.parquet as pq
from transformers import AutoModelForCausalLM, AutoTokenizer
from cachekit.index import Index
original_dir, commit = sys.argv[1], sys.argv[2]
texts = ["Question: Which is a mammal?\nAnswer: a whale", "The quick brown fox", "1 2 3"]
ref_tok = AutoTokenizer.from_pretrained(original_dir)
ref = AutoModelForCausalLM.from_pretrained(original_dir).eval()
out = {}
for rev in (None, commit):
    kw = {"revision": rev} if rev else {}
    tok = AutoTokenizer.from_pretrained("testorg/tiny-llama", **kw)
    model = AutoModelForCausalLM.from_pretrained("testorg/tiny-llama", **kw).eval()
    diffs = []
    for t in texts:
        ids = tok(t, return_tensors="pt").input_ids
        assert ids.tolist() == ref_tok(t, return_tensors="pt").input_ids.tolist()
        with torch.no_grad():
            diffs.append((model(ids).logits - ref(ids).logits).abs().max().item())
    out[str(rev)] = max(diffs)
rows = pq.read_table(Index().resolve_split("allenai/ai2_arc", "ARC-Easy", "validation")).to_pylist()
out["rows"] = rows
print(json.dumps(out))
"""


@pytest.mark.slow
def test_round_trip(hub_server, tmp_path, tiny_model_dir, arc_parquet_repo):
    commit = commit_folder(hub_server, "testorg/tiny-llama", tiny_model_dir, tag="v1")
    hub_server.commit("allenai/ai2_arc", arc_parquet_repo, repo_type="dataset")
    online = clean_env(HF_HOME=str(tmp_path / "online"), HF_ENDPOINT=hub_server.url)
    bundle = tmp_path / "bundle.tar"
    r = run_cli("cachekit", "prefetch", "--model", "testorg/tiny-llama", "--dataset", "allenai/ai2_arc",
                "--out", bundle, env=online)
    assert r.returncode == 0, r.stderr

    offline = clean_env(HF_HOME=str(tmp_path / "offline"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1")
    r = run_cli("cachekit", "verify", bundle, env=offline)
    assert r.returncode == 0, r.stderr
    r = run_cli("cachekit", "import", bundle, env=offline)
    assert r.returncode == 0, r.stderr

    r = subprocess.run([sys.executable, "-c", CHECK, str(tiny_model_dir), commit], env=offline, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["None"] == 0.0 and result[commit] == 0.0  # bit-identical weights
    assert result["rows"] == arc_rows()

    m = mf.parse(json.dumps(_manifest(bundle)))
    model = next(e for e in m.entries if e.kind == "model")
    assert model.commit == commit and model.revision == "main"
    assert {f.path for f in model.files} == {p.name for p in Path(tiny_model_dir).iterdir()}
    assert {"huggingface_hub", "datasets", "pyarrow", "python"} <= set(m.libraries)


def _manifest(bundle: Path) -> dict:
    import tarfile

    with tarfile.open(bundle) as t:
        return json.load(t.extractfile("manifest.json"))


LOAD_DATASET = r"""
import json
import datasets
from huggingface_hub import hf_hub_download
ds = datasets.load_dataset("allenai/ai2_arc", "ARC-Easy", split="validation")
card = open(hf_hub_download("allenai/ai2_arc", "README.md", repo_type="dataset")).read()
print(json.dumps({"rows": ds.to_list(), "card": card}))
"""


def test_load_dataset_offline_after_import(hub_server, tmp_path, arc_parquet_repo):
    """After import, `datasets.load_dataset(repo_id, config, split=...)` returns the source rows
    with HF_HUB_OFFLINE=1, and the hub layout holds the Parquet files and a README `configs:`."""
    commit = hub_server.commit("allenai/ai2_arc", arc_parquet_repo, repo_type="dataset")
    online = clean_env(HF_HOME=str(tmp_path / "online"), HF_ENDPOINT=hub_server.url)
    bundle = tmp_path / "bundle"
    r = run_cli("cachekit", "prefetch", "--dataset", "allenai/ai2_arc", "--out", bundle, env=online)
    assert r.returncode == 0, r.stderr
    offline = clean_env(HF_HOME=str(tmp_path / "offline"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = run_cli("cachekit", "import", bundle, env=offline)
    assert r.returncode == 0, r.stderr
    assert "datasets cache allenai/ai2_arc ARC-Easy: new" in r.stdout
    snap = tmp_path / "offline" / "hub" / "datasets--allenai--ai2_arc" / "snapshots" / commit
    assert (snap / "ARC-Easy" / "validation.parquet").is_symlink()
    assert not list((tmp_path / "offline").rglob(".cachekit-staging-*")), "staging folders left behind"
    assert (tmp_path / "offline" / "hub" / "datasets--allenai--ai2_arc" / "refs" / "main").read_text() == commit
    r = subprocess.run([sys.executable, "-c", LOAD_DATASET], env=offline, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["rows"] == arc_rows()
    assert "config_name: ARC-Easy" in got["card"] and "path: ARC-Easy/validation.parquet" in got["card"]
    # a second import changes nothing; the store index still serves evalcore
    r = run_cli("cachekit", "import", bundle, env=offline)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout + r.stderr
