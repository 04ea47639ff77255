"""Every built-in task on real benchmark rows (tests/data), through the whole path: bundle ->
import -> evalcore eval with the tiny real model -> per-sample records and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import BUILTIN, build_context, fewshot_rows, task_for
from tests.conftest import ROOT, clean_env, run_cli
from tests.helpers.data import read_rows

DATA = ROOT / "tests" / "data"
REPOS = {"baber/piqa": "piqa", "lighteval/siqa": "social_i_qa", "lukaemon/bbh": "bbh",
         "openai/openai_humaneval": "openai_humaneval", "openai/gsm8k": "gsm8k", "cais/mmlu": "mmlu",
         "allenai/ai2_arc": "../../bundles/demo/data/ai2_arc"}


def rows(rel: str) -> list[dict]:
    return read_rows(DATA / rel)


def spec(name: str, **kw):
    return parse_plan({"datasets": [{"name": name, **kw}]}).datasets[0]


def test_prompts_follow_lm_eval():
    arc = json.loads((ROOT / "bundles/demo/data/ai2_arc/ARC-Easy/validation.jsonl").read_text().splitlines()[0])
    t = task_for(spec("arc_easy_ppl"))
    assert build_context(t, arc, []) == f"Question: {arc['question']}\nAnswer:"
    assert t.choices(arc) == arc["choices"]["text"] and t.target(arc) == arc["choices"]["label"].index(arc["answerKey"])
    piqa = rows("piqa/validation.jsonl")[0]
    t = task_for(spec("piqa_ppl"))
    assert build_context(t, piqa, []) == f"Question: {piqa['goal']}\nAnswer:" and t.target(piqa) == piqa["label"]
    siqa = rows("social_i_qa/validation.jsonl")[0]
    t = task_for(spec("siqa_ppl"))
    assert build_context(t, siqa, []) == f"Q: {siqa['context']} {siqa['question']}\nA:"
    assert t.target(siqa) == int(siqa["label"]) - 1
    mmlu_test, mmlu_dev = rows("mmlu/all/test.jsonl"), rows("mmlu/all/dev.jsonl")
    t = task_for(spec("mmlu_ppl", fewshot=2))
    q = mmlu_test[0]
    ctx = build_context(t, q, fewshot_rows(t, mmlu_dev, q))
    assert ctx.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert ctx.count("\nAnswer:") == 3 and ctx.endswith("D. " + q["choices"][3] + "\nAnswer:")
    shots = fewshot_rows(t, mmlu_dev, q)
    assert all(s["subject"] == q["subject"] for s in shots)
    assert f"\nAnswer: {'ABCD'[shots[0]['answer']]}\n\n" in ctx
    gsm = rows("gsm8k/main/test.jsonl")[0]
    t = task_for(spec("gsm8k_gen"))
    ctx = build_context(t, gsm, fewshot_rows(t, rows("gsm8k/main/train.jsonl"), gsm))
    assert ctx.count("Question: ") == 6 and ctx.endswith(f"Question: {gsm['question']}\nAnswer:")
    assert t.stop == ("Question:", "</s>", "<|im_end|>")
    distinct = {id(t): t for t in BUILTIN.values()}.values()  # an alias (lm-eval's name) is the same entry
    assert len({t.version for t in distinct}) == len(distinct)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("catalog")
    env = clean_env(HF_HOME=str(d / "hf"), EVALCORE_STATE_DIR=str(d / "state"))
    args = []
    for repo, folder in REPOS.items():
        args += ["--local", f"dataset:{repo}={(DATA / folder).resolve()}"]
    r = run_cli("cachekit", "prefetch", *args, "--out", d / "bundle.tar", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("cachekit", "import", d / "bundle.tar", env=env)
    assert r.returncode == 0, r.stderr
    return d, env


@pytest.mark.slow
def test_every_builtin_task_runs_end_to_end(installed, tiny_model_dir):
    d, env = installed
    plan = d / "plan.toml"
    datasets = "".join(f'\n[[datasets]]\nname = "{n}"\nlimit = 3\n' for n in
                       ("arc_easy_ppl", "piqa_ppl", "siqa_ppl", "siqa_gen", "mmlu_ppl", "gsm8k_gen"))
    datasets += '\n[[datasets]]\nname = "bbh_gen"\nconfig = "boolean_expressions"\nlimit = 3\n'  # one config installed
    datasets += '\n[[datasets]]\nname = "humaneval_gen"\nlimit = 2\nallow_code_execution = true\nmax_out_len = 32\n'
    plan.write_text(f'[run]\nwork_dir = "{d / "outputs"}"\nmax_num_workers = 2\n\n[[models]]\nabbr = "tiny"\n'
                    f'path = "{tiny_model_dir}"\nmax_out_len = 24\nbatch_size = 4\n' + datasets)
    r = run_cli("evalcore", "eval", plan, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.splitlines()[0].split(": ", 1)[1])
    out = d / "samples.jsonl"
    assert run_cli("evalcore", "report", run_dir, "--samples", out, env=env).returncode == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    by = {}
    for rec in recs:
        by.setdefault(rec["dataset"], []).append(rec)
    assert set(by) == {"arc_easy_ppl", "piqa_ppl", "siqa_ppl", "siqa_gen", "mmlu_ppl", "gsm8k_gen", "bbh_gen",
                       "humaneval_gen"}
    assert set(by["gsm8k_gen"][0]["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert by["mmlu_ppl"][0]["group"] == "abstract_algebra" and len(by["piqa_ppl"][0]["requests"]) == 2
    assert set(by["gsm8k_gen"][0]["requests"][0]) == {"context", "generation", "filtered"}
    assert by["humaneval_gen"][0]["execution"]["status"] in ("passed", "failed", "error", "timeout")
    assert set(by["humaneval_gen"][0]["metrics"]) == {"pass@1"}
    table = run_cli("evalcore", "report", run_dir, "--format", "json", env=env).stdout
    rows = json.loads(table)["results"]
    metrics = {(row["dataset"], row["metric"]) for row in rows}
    assert ("mmlu_ppl", "acc") in metrics and ("humaneval_gen", "pass@1") in metrics


def test_code_execution_needs_consent(installed, tiny_model_dir):
    d, env = installed
    r = run_cli("evalcore", "eval", "--hf-path", tiny_model_dir, "--datasets", "humaneval_gen",
                "--work-dir", d / "o2", env=env)
    assert r.returncode == 2 and "set allow_code_execution = true" in r.stderr
