"""Scores of lm-eval task files, per sample, as lm-eval 0.4.13 computes them
(lm_eval/api/task.py `process_results`; filters: lm_eval/filters/; exact match:
lm_eval/api/metrics.py via evalcore.scoring.metrics). Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence

from evalcore.scoring import metrics

from .definition import Task
from .rows import Requests


def _argmax(values: Sequence[float]) -> int:
    return metrics._argmax(list(values))


def score_multiple_choice(task: Task, reqs: Requests, lls: list[float], greedy: list[bool]) -> tuple[dict, int]:
    choices = list(reqs.choices)
    pred = _argmax(lls)
    pred_norm = _argmax([metrics._np_divide(ll, float(len(c))) for ll, c in zip(lls, choices, strict=True)])
    pred_bytes = _argmax([metrics._np_divide(ll, float(len(c.encode("utf-8")))) for ll, c in zip(lls, choices, strict=True)])
    gold = reqs.gold
    golds = list(gold) if isinstance(gold, tuple) else [gold]
    out = {}
    for m in task.scoring["metrics"]:
        name = m["metric"]
        if name == "acc":
            out[name] = 1.0 if pred in golds else 0.0
        elif name == "acc_norm":
            out[name] = 1.0 if pred_norm in golds else 0.0
        elif name == "acc_bytes":
            out[name] = 1.0 if pred_bytes in golds else 0.0
        elif name == "exact_match":
            out[name] = float(int(any(greedy[g] for g in golds)))
    return out, pred


def apply_filter(steps: list[dict], generation: str):
    """One filter pipeline on one response (lm-eval applies it to the list of a doc's responses;
    with one greedy response per doc, `take_first` and `majority_vote` leave it as is)."""
    resp: object = [generation]
    for step in steps:
        fn = step["function"]
        kw = {k: v for k, v in step.items() if k != "function"}
        items = resp if isinstance(resp, list) else [resp]
        if fn == "take_first":
            resp = items[0]
        elif fn == "majority_vote":
            resp = [items[0]] if items else items
        elif fn == "regex":
            resp = [metrics.regex_filter(x, kw.get("regex_pattern", r"#### (\-?[0-9\.\,]+)"),
                                         kw.get("group_select", 0), kw.get("fallback", "[invalid]")) for x in items]
        elif fn == "remove_whitespace":
            resp = [x.strip() for x in items]
        elif fn == "lowercase":
            resp = [x.lower() for x in items]
        elif fn == "uppercase":
            resp = [x.upper() for x in items]
        elif fn == "map":
            mapping = kw.get("mapping_dict") or {}
            resp = [mapping.get(x, kw.get("default_value")) for x in items]
        else:  # the reader refuses any other filter
            raise ValueError(f"filter {fn!r} is not supported")
        if fn != "take_first" and not isinstance(resp, list):
            resp = [resp]
    return resp[0] if isinstance(resp, list) else resp


def score_generation(task: Task, generation: str, gold) -> tuple[dict, dict]:
    filtered, out = {}, {}
    for f in task.scoring["filters"]:
        answer = apply_filter(f["filter"], generation)
        filtered[f["name"]] = answer
        for m in task.scoring["metrics"]:
            kw = {k: v for k, v in m.items() if k != "metric"}
            key = m["metric"] if f["name"] == "none" else f"{m['metric']},{f['name']}"
            result = answer if isinstance(answer, str) else str(answer)
            if isinstance(gold, tuple):  # multiple targets: right if any is
                score = metrics.exact_match_hf_evaluate([result] * len(gold), list(gold), **kw)
                out[key] = 1.0 if score > 0.0 else 0.0
            else:
                out[key] = metrics.exact_match_hf_evaluate([result], [str(gold)], **kw)
    return filtered, out


def score_loglikelihood(task: Task, reqs: Requests, ll: float, greedy: bool) -> dict:
    names = [m["metric"] for m in task.scoring["metrics"]]
    if task.scoring["output_type"] == "loglikelihood":
        out = {}
        if "perplexity" in names:
            out["perplexity"] = ll
        if "acc" in names:
            out["acc"] = float(int(greedy))
        return out
    text = reqs.continuations[0]
    words, nbytes = len(re.split(r"\s+", text)), len(text.encode("utf-8"))
    out = {}
    if "word_perplexity" in names:
        out["word_perplexity"] = [ll, words]
    if "byte_perplexity" in names:
        out["byte_perplexity"] = [ll, nbytes]
    if "bits_per_byte" in names:
        out["bits_per_byte"] = [ll, nbytes]
    return out
