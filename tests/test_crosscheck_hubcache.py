"""lm-eval's own `arc_easy` task, run offline by `make crosscheck` (scripts/crosscheck_hubcache.py)
on `allenai/ai2_arc` installed by `cachekit import`, against evalcore on the same rows.

The committed result (tests/crosscheck/hubcache/) must say that lm-eval ran its shipped task
(dataset_path allenai/ai2_arc, not a local file) with the hub and datasets offline, and agreed
with evalcore. Then the bundle is rebuilt here the same way (local hub server, prefetch, verify,
import into a fresh HF_HOME), `load_dataset` offline reads the rows lm-eval read, and evalcore's
backend on the tiny model reproduces lm-eval's per-sample numbers from the committed file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, clean_env

XC = ROOT / "tests" / "crosscheck" / "hubcache"


def _summary() -> dict:
    return json.loads((XC / "summary.json").read_text())


def _reference() -> list[dict]:
    return [json.loads(x) for x in (XC / "arc_easy.jsonl").read_text().splitlines() if x.strip()]


def test_committed_run_is_lm_evals_own_task_offline_and_agrees():
    s = _summary()
    task = s["lmeval"]["task"]
    assert task["task"] == "arc_easy" and task["dataset_path"] == "allenai/ai2_arc"
    assert task["dataset_name"] == "ARC-Easy" and task["test_split"] == "test"
    assert "--tasks arc_easy" in s["lmeval"]["command"] and "--include_path" not in s["lmeval"]["command"]
    assert s["lmeval"]["env"]["HF_HUB_OFFLINE"] == "1" and s["lmeval"]["env"]["HF_DATASETS_OFFLINE"] == "1"
    assert s["lmeval"]["env"]["OMP_NUM_THREADS"] == "1"
    assert s["versions"]["lm_eval"] == "0.4.13"
    assert s["comparison"]["agree"] and not s["comparison"]["problems"]
    ref = _reference()
    docs = {r["doc"] for r in ref}
    assert len(docs) == s["lmeval"]["n_docs"] == s["comparison"]["docs"] == 40
    assert s["bundle"]["splits"]["test"]["rows"] == 40
    n = s["lmeval"]["n_docs"]
    acc = sum(r["acc"] for r in ref if r["request"] == 0) / n
    assert acc == pytest.approx(s["lmeval"]["metrics"]["acc,none"]) == s["comparison"]["evalcore_metrics"]["acc"]


@pytest.mark.slow
def test_evalcore_on_the_imported_bundle_reproduces_lm_eval(tmp_path, tiny_model_dir):
    from scripts import crosscheck_hubcache as xh

    s = _summary()
    digest = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert digest == s["model"]["model.safetensors_sha256"], "not the model lm-eval was run on"
    bundle, home = xh.bundle_and_import(tmp_path / "work")
    assert bundle["files"] == s["bundle"]["files"], "the served ARC-Easy is not the one lm-eval read"
    # what lm-eval's task loads: datasets.load_dataset(dataset_path, dataset_name), offline
    code = ("import json, datasets\n"
            "d = datasets.load_dataset('allenai/ai2_arc', 'ARC-Easy')\n"
            "print(json.dumps({k: [r['id'] for r in v] for k, v in d.items()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=clean_env(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    ids = json.loads(out.stdout.strip().splitlines()[-1])
    ref = _reference()
    lm_ids = [r["id"] for r in ref if r["request"] == 0]
    assert ids["test"][: len(lm_ids)] == lm_ids
    rows = xh.evalcore_rows(home, len(lm_ids))
    verdict = xh.compare(ref, rows, tiny_model_dir)
    assert verdict["agree"], verdict["problems"]
    assert verdict["max_abs_loglikelihood_diff"] < 1e-4
