"""The standard suite against lm-evaluation-harness 0.4.13, sample by sample (tests/crosscheck,
written by `make crosscheck` = scripts/crosscheck_suite.py): our built-ins build the same contexts
and continuations from the same rows, our backend's log-likelihoods are within 1e-4 (tiny model)
and give the same per-document acc / acc_norm (TruthfulQA MC2's probability mass within 1e-3,
LAMBADA's greedy acc equal), and greedy generations and their filtered answers and exact_match
are identical (GSM8K CoT, BBH CoT, HumanEval, MBPP)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from evalcore.benchmarks.definition import SUBSET_FIELD
from evalcore.benchmarks.engine import fewshot_rows, prepare_rows, requests_for
from evalcore.benchmarks.scores import score_gen, score_ll, score_loglik
from tests.conftest import ROOT
from tests.helpers.data import read_rows, requests_by_doc, task_named

XC = ROOT / "tests" / "crosscheck"
DATA = ROOT / "scripts" / "crosscheck_tasks" / "data"
SMOLLM2 = ROOT / "build" / "models" / "smollm2-135m-instruct"

# reference file -> (our built-in name, slice)
MC = {
    "hellaswag": ("hellaswag", "hellaswag/validation.jsonl"),
    "winogrande": ("winogrande", "winogrande/validation.jsonl"),
    "boolq": ("boolq", "boolq_superglue/validation.jsonl"),
    "commonsense_qa": ("commonsense_qa", "commonsense_qa/validation.jsonl"),
    "openbookqa": ("openbookqa", "openbookqa/test.jsonl"),
    "truthfulqa_mc1": ("truthfulqa_mc1", "truthfulqa/validation.jsonl"),
    "truthfulqa_mc2": ("truthfulqa_mc2", "truthfulqa/validation.jsonl"),
    "arc_challenge": ("arc_challenge", "arc_challenge/validation.jsonl"),
    "siqa": ("siqa", "siqa/validation.jsonl"),
    "lambada_openai": ("lambada_openai", "lambada_openai/test.jsonl"),
}
GEN = {
    "gsm8k_cot": ("gsm8k_cot", "gsm8k/test.jsonl"),
    "bbh": ("bbh", None),
    "humaneval": ("humaneval", "../../../tests/data/openai_humaneval/test.jsonl"),
    "mbpp": ("mbpp", "mbpp/test.jsonl"),
}
TOLERANCE = {"tiny": 1e-4, "smollm2": 1e-3}
DOCS = {"tiny": None, "smollm2": 10}  # documents checked per task (SmolLM2: the first 10, for time on 2 cores)


def reference(model: str, name: str) -> dict[tuple[str, int], list[dict]]:
    p = XC / model / f"{name}.jsonl"
    return requests_by_doc(p) if p.exists() else {}


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def model(request, tiny_model_dir):
    path = tiny_model_dir if request.param == "tiny" else SMOLLM2
    if request.param == "smollm2" and not (path / "model.safetensors").exists():
        pytest.skip("SmolLM2 is not built: `make test` builds it first (make smollm2)")
    summary_path = XC / request.param / "suite-summary.json"
    if not summary_path.exists():
        pytest.skip(f"no {summary_path.relative_to(ROOT)} (make crosscheck)")
    summary = json.loads(summary_path.read_text())
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == \
        summary["model"]["model.safetensors_sha256"], "not the model lm-eval was run on"
    return request.param, path


def _backend(path: Path, max_seq_len: int | None = None):
    from evalcore.backends.base import ModelSettings
    from evalcore.backends.hf import HFBackend

    return HFBackend(ModelSettings(path=str(path), batch_size=16, threads=2, max_seq_len=max_seq_len))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_loglikelihood_tasks_match_lm_eval(model):
    from evalcore.engine.worker import loglikelihoods

    name, path = model
    checked, worst, missing = 0, 0.0, []
    backend = _backend(path)
    try:
        for ref_name, (ours, rel) in MC.items():
            refs = reference(name, ref_name)
            if not refs:
                missing.append(ref_name)
                continue
            task = task_named(ours)
            docs = prepare_rows(task, read_rows(DATA / rel))
            built = []
            for i, doc in enumerate(docs[:DOCS[name]]):
                ref = refs.get((ref_name, i))
                if ref is None:
                    continue
                req = requests_for(task, doc, fewshot_rows(task, docs, doc, i))
                pairs = ([(c, req.continuations[0]) for c in req.contexts] if len(req.contexts) > 1
                         else [(req.contexts[0], k) for k in req.continuations])
                assert pairs == [(r["context"], r["continuation"]) for r in ref], f"{ref_name} doc {i}: requests differ"
                built.append((i, doc, req, ref))
            results = loglikelihoods(backend, [b[2] for b in built])
            for (i, doc, req, ref), (lps, greedy, ntok) in zip(built, results, strict=True):
                for r, lp, g in zip(ref, lps, greedy, strict=True):
                    worst = max(worst, abs(lp - r["loglikelihood"]))
                    assert g == r["is_greedy"], f"{ref_name} doc {i}: greedy flag differs"
                if task.mode == "loglik":
                    rec = score_loglik(task, doc, i, req, lps, greedy)
                    assert rec["metrics"]["acc"] == ref[0]["acc"], f"{ref_name} doc {i}: acc differs"
                    assert abs(rec["metrics"]["perplexity"] - ref[0]["perplexity"]) <= TOLERANCE[name]
                else:
                    rec = score_ll(task, doc, i, req, lps, greedy, n_tokens=ntok)
                    if task.metric == "mc2":
                        assert abs(rec["metrics"]["acc"] - ref[0]["acc"]) <= 1e-3, f"{ref_name} doc {i}: mc2 differs"
                    else:
                        for m in ("acc", "acc_norm"):
                            if m in ref[0]:
                                assert rec["metrics"][m] == ref[0][m], f"{ref_name} doc {i}: {m} differs"
                checked += 1
            assert built, f"{ref_name}: no documents checked"
    finally:
        backend.close()
    assert not missing, f"no lm-eval reference for {missing} (make crosscheck)"
    assert checked >= (300 if DOCS[name] is None else 9 * DOCS[name]) and worst <= TOLERANCE[name], (checked, worst)


def _gen_docs(ref_name: str, ours: str, rel: str | None) -> list[tuple[str, list[dict]]]:
    if ref_name != "bbh":
        return [(ref_name, read_rows(DATA / rel))]
    return [(f"bbh_{p.name}", [{**r, SUBSET_FIELD: p.name} for r in read_rows(p / "test.jsonl")])
            for p in sorted((DATA / "bbh").iterdir())]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("ref_name", list(GEN))
def test_generation_tasks_match_lm_eval(model, ref_name):
    from evalcore.backends.base import GenRequest

    name, path = model
    refs = reference(name, ref_name)
    if not refs and name == "smollm2":  # SmolLM2's long generations are not all in (tests/crosscheck/README.md)
        pytest.skip(f"no SmolLM2 reference tests/crosscheck/smollm2/{ref_name}.jsonl")
    assert refs, f"no lm-eval reference tests/crosscheck/{name}/{ref_name}.jsonl (make crosscheck)"
    ours, rel = GEN[ref_name]
    task = task_named(ours)
    items = []
    for sub, docs in _gen_docs(ref_name, ours, rel):
        for i, doc in enumerate(docs):
            ref = refs.get((sub, i))
            if ref is None:
                continue
            req = requests_for(task, doc, fewshot_rows(task, docs, doc, i))
            assert req.contexts[0] == ref[0]["context"], f"{sub} doc {i}: context differs"
            assert list(task.stop) == [u for u in ref[0]["gen_kwargs"]["until"]], f"{sub}: stop strings differ"
            assert task.max_out_len == ref[0]["gen_kwargs"].get("max_gen_toks", 256)
            items.append((sub, i, doc, req, ref[0]))
    assert items
    backend = _backend(path, 4096 if name == "tiny" and ref_name in ("bbh", "humaneval") else None)
    try:
        gens = backend.generate([GenRequest(it[3].contexts[0], task.max_out_len, task.stop) for it in items])
    finally:
        backend.close()
    for (sub, i, doc, req, ref), g in zip(items, gens, strict=True):
        assert g == ref["generation"], f"{sub} doc {i}: generation differs"
        if task.needs_execution:
            continue  # lm-eval's code_eval needs the hub: only the generation is compared
        rec = score_gen(task, doc, i, req, g)
        for filt, got in rec["requests"][0]["filtered"].items():
            assert got == ref[filt]["extracted"], f"{sub} doc {i}: {filt} answer differs"
            assert rec["metrics"][f"exact_match,{filt}"] == ref[filt]["exact_match"], f"{sub} doc {i}: {filt}"
