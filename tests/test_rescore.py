"""`evalcore rescore`: metrics recomputed from the stored samples, no model, tokenizer or GPU; a new
results version each time (the old kept), refusals before anything is written."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from evalcore.scoring import metrics
from tests.conftest import ROOT, clean_env, run_cli
from tests.test_engine import ARC_DATASET, run_dir_of, sample_rows, scripted, tiny, write_plan

HEAVY = ("torch", "transformers", "datasets", "huggingface_hub", "pyarrow", "numpy")


def gen_dataset(path: Path, n: int = 6) -> str:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"q": f"What is {i} plus {i}?", "a": str(2 * i)}) + "\n")
    return (f'\n[[datasets]]\nabbr = "sums"\npath = "{path}"\nmode = "gen"\ntemplate = "Q: {{q}}\\nA:"\n'
            'label = "a"\nmax_out_len = 6\n')


def all_results(run_dir: Path) -> dict[int, dict]:
    con = sqlite3.connect(run_dir / "ledger.db")
    out: dict[int, dict] = {}
    for v, m, d, s, k, val, se, n in con.execute(
            "SELECT version, model_key, dataset_key, subtask, metric, value, stderr, n FROM results"):
        out.setdefault(v, {})[(m, d, s, k)] = (val, se, n)
    con.close()
    return out


def test_rescoring_a_finished_run_gives_identical_figures(tmp_path):
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha") + scripted("beta"),
                      ARC_DATASET + gen_dataset(tmp_path / "sums.jsonl"), limit=12)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    r = run_cli("evalcore", "rescore", run_dir, env=env)
    assert r.returncode == 0, r.stderr
    assert "results version 2 (rescore)" in r.stdout
    got = all_results(run_dir)
    assert set(got) == {1, 2} and len(got[1]) == 2 * 3          # acc, acc_norm, exact_match per model
    assert got[2] == got[1]                                       # exactly: same floats, n, stderr
    rep = run_cli("evalcore", "report", run_dir, "--format", "json", env=env)
    doc = json.loads(rep.stdout)
    assert doc["results_version"]["version"] == 2 and doc["results_version"]["kind"] == "rescore"
    assert "results version 2 of 2 (rescore" in rep.stderr


def test_rescoring_a_generation_task_without_the_model(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    plan = write_plan(tmp_path / "plan.toml", tiny(model), gen_dataset(tmp_path / "sums.jsonl"), max_num_workers=1)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    shutil.rmtree(model)                                          # the model is gone
    gens = {i: json.loads(o) for _, i, o in sample_rows(run_dir)}
    pattern = r"(\d+)"
    stmt = ("from click.testing import CliRunner; import cli.evalcore_cli as c; "
            f"res = CliRunner().invoke(c.evalcore, ['rescore', {str(run_dir)!r}, '--metric', 'exact_match', "
            f"'--filter', 'regex:{pattern}']); print(res.output, file=sys.stderr); assert res.exit_code == 0")
    code = f"import sys\n{stmt}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", f"rescore loaded {p.stdout.strip()}"
    expected = [metrics.exact_match(metrics.regex_filter(g["requests"][0]["generation"], pattern), g["gold"])
                for g in gens.values()]
    got = all_results(run_dir)
    assert got[2][("tiny", "sums", "", "exact_match")][0] == sum(expected) / len(expected)
    assert got[2][("tiny", "sums", "", "exact_match")][2] == 6
    # another metric on the same stored generations, and the report names the newest version
    r = run_cli("evalcore", "rescore", run_dir, "--metric", "gsm8k", env=env)
    assert r.returncode == 0, r.stderr
    got = all_results(run_dir)
    assert {k[3] for k in got[3]} == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert set(got) == {1, 2, 3} and got[1] != got[3]
    rep = run_cli("evalcore", "report", run_dir, "--format", "csv", env=env)
    assert rep.returncode == 0 and "results version 3 of 3 (rescore" in rep.stderr and "metrics: gsm8k" in rep.stderr
    assert rep.stdout.splitlines()[0] == "dataset,task_version,metric,mode,model,subtask,value,stderr,n,results_version"
    assert re.search(r"^sums,\w+,\"exact_match,flexible-extract\",gen,tiny,,[0-9.]+,[0-9.e-]*,6,3$", rep.stdout, re.M)


def test_rescore_refuses_what_would_not_take_effect(tmp_path):
    env = clean_env(HF_HOME=str(tmp_path / "hf"), EVALCORE_STATE_DIR=str(tmp_path / "state"))
    plan = write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=4)
    r = run_cli("evalcore", "eval", plan, env=env)
    run_dir = run_dir_of(r.stdout)
    before = all_results(run_dir)
    for args, msg in ((["--metric", "bleu"], "unknown metric 'bleu'"),
                      (["--metric", "gsm8k"], "metric 'gsm8k' scores gen samples, and no selected dataset"),
                      (["--filter", "strip"], "--filter 'strip' would change nothing"),
                      (["--filter", "regex:("], "not a regular expression"),
                      (["--dataset", "nope"], "dataset 'nope' is not in this run")):
        r = run_cli("evalcore", "rescore", run_dir, *args, env=env)
        err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert r.returncode == 2 and len(err) == 1 and msg in err[0], (args, r.stderr)
        assert all_results(run_dir) == before


def test_records_with_a_requests_list_read_and_rescore_the_same():
    """A sample stored as a `requests` list (one model call per choice) reads as the flat record
    and rescores to the same figures; a task without a rescorer keeps its stored scores."""
    from evalcore.engine.rescore import Choice, choose, default_scorer, rescore_record
    from evalcore.engine.samples import normalise
    from evalcore.plan.spec import DatasetSpec
    from evalcore.plan.tasks import task_for
    from evalcore.report.html import sample_view

    task = task_for(DatasetSpec("arc", "custom", "x.jsonl", mode="ll", template="{q}", choices="c", label="a"))
    flat = {"index": 3, "prompt": "Q?", "choices": ["yes", "no way"], "continuations": [" yes", " no way"],
            "logprobs": [-2.0, -2.5], "greedy": [False, False], "pred": 0, "pred_norm": 1, "gold": 1,
            "metrics": {"acc": 0.0, "acc_norm": 1.0}}
    listed = {"index": 3, "gold": 1, "pred": 0, "metrics": {"acc": 0.0, "acc_norm": 1.0},
              "requests": [{"context": "Q?", "continuation": " yes", "loglikelihood": -2.0, "greedy": False},
                           {"context": "Q?", "continuation": " no way", "loglikelihood": -2.5, "greedy": False}]}
    rec = normalise(listed)
    assert (rec["prompt"], rec["logprobs"], rec["continuations"]) == ("Q?", [-2.0, -2.5], [" yes", " no way"])
    choice = Choice(("acc",), None)
    assert rescore_record(rec, task, choice)["metrics"] == rescore_record(flat, task, choice)["metrics"] == flat["metrics"]
    view = sample_view({"model": "m", "dataset": "arc", **rec})
    assert [c["t"] for c in view["c"]] == ["yes", "no way"] and view["c"][1]["g"] and view["c"][0]["pr"]
    gen = normalise({"index": 0, "gold": "4", "pred": "4", "metrics": {"exact_match": 1.0},
                     "requests": [{"context": "2+2=", "generation": " 4", "filtered": {"strip": "4"}}]})
    assert (gen["prompt"], gen["generation"]) == ("2+2=", " 4")
    from dataclasses import replace

    odd = replace(task, metric="lmeval")
    assert default_scorer(odd) == "stored"
    assert choose({"arc": odd}, [], None, [])["arc"] == Choice(("stored",), None)
    assert rescore_record(rec, odd, Choice(("stored",), None))["metrics"] == rec["metrics"]
