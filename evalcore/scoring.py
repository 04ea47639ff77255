"""Per-sample scores and their aggregation: from a task, a row and the model's output to the
sample record stored in the ledger, and from sample records to the summary. Pure."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from . import metrics
from .benchmarks import suite_scoring
from .benchmarks.definition import Task
from .benchmarks.rows import Requests


def score_ll(task: Task, row: dict, index: int, reqs: Requests, logprobs: list[float], greedy: list[bool],
             n_tokens: list[int] | None = None) -> dict:
    """A multiple-choice row (one request per choice, or per context in the multiple-input form)."""
    requests = _ll_requests(reqs, logprobs, greedy)
    gold = reqs.gold
    if task.metric in suite_scoring.CHOICE_METRICS:
        rec_metrics, pred = suite_scoring.score_choices(task, row, reqs, logprobs, n_tokens)
    elif task.metric == "lmeval":
        from .benchmarks.lmeval_scoring import score_multiple_choice

        rec_metrics, pred = score_multiple_choice(task, reqs, logprobs, greedy)
    else:
        pred = metrics.choose(logprobs, list(reqs.choices))[0]
        rec_metrics = metrics.mc_scores(logprobs, list(reqs.choices), list(gold) if isinstance(gold, tuple) else gold)
    rec = {"index": index, "requests": requests, "gold": list(gold) if isinstance(gold, tuple) else gold,
           "pred": pred, "metrics": rec_metrics}
    if task.group:
        rec["group"] = task.group(row)
    if suite_scoring.category(task, row):
        rec["category"] = suite_scoring.category(task, row)
    return rec


def score_loglik(task: Task, row: dict, index: int, reqs: Requests, logprobs: list[float], greedy: list[bool],
                 n_tokens: list[int] | None = None) -> dict:
    """`loglikelihood` (one continuation) and `loglikelihood_rolling` (a whole text) rows."""
    requests = _ll_requests(reqs, logprobs, greedy)
    if task.metric in suite_scoring.LOGLIK_METRICS:
        rec_metrics = suite_scoring.score_loglik(task, logprobs[0], greedy[0])
    else:
        from .benchmarks.lmeval_scoring import score_loglikelihood

        rec_metrics = score_loglikelihood(task, reqs, logprobs[0], greedy[0])
    rec = {"index": index, "requests": requests, "gold": reqs.continuations[0], "metrics": rec_metrics}
    if task.group:
        rec["group"] = task.group(row)
    return rec


def _ll_requests(reqs: Requests, logprobs: list[float], greedy: list[bool]) -> list[dict]:
    pairs = ([(c, reqs.continuations[0]) for c in reqs.contexts] if len(reqs.contexts) > 1
             else [(reqs.contexts[0], k) for k in reqs.continuations])
    if len(pairs) != len(logprobs):
        raise ValueError(f"{len(logprobs)} log-likelihoods for {len(pairs)} requests")
    return [{"context": c, "continuation": k, "loglikelihood": lp, "greedy": bool(g)}
            for (c, k), lp, g in zip(pairs, logprobs, greedy, strict=True)]


def score_gen(task: Task, row: dict, index: int, reqs: Requests, generation: str, *,
              allow_code_execution: bool = False) -> dict:
    gold = reqs.gold
    prompt = reqs.contexts[0]
    request = {"context": prompt, "generation": generation}
    rec = {"index": index, "requests": [request], "gold": list(gold) if isinstance(gold, tuple) else gold}
    if task.metric in suite_scoring.GEN_METRICS:
        got = suite_scoring.score_generation(task, row, generation, gold, allow_code_execution=allow_code_execution)
        request["filtered"], rec["pred"], rec["metrics"] = got["filtered"], got["pred"], got["metrics"]
        rec.update({"execution": got["execution"]} if "execution" in got else {})
    elif task.metric == "lmeval":
        from .benchmarks.lmeval_scoring import score_generation

        filtered, rec["metrics"] = score_generation(task, generation, gold)
        request["filtered"] = filtered
        rec["pred"] = next(iter(filtered.values())) if filtered else generation
    elif task.metric == "gsm8k":
        strict = metrics.regex_filter(generation, metrics.GSM8K_STRICT_REGEX)
        request["filtered"] = {"strict-match": strict,
                               "flexible-extract": metrics.regex_filter(generation, metrics.GSM8K_FLEXIBLE_REGEX, group_select=-1)}
        rec["pred"] = strict
        rec["metrics"] = metrics.gsm8k_scores(generation, gold)
    elif task.metric == "bbh":
        rec["pred"] = generation.strip()
        rec["metrics"] = {"exact_match": metrics.bbh_zeroshot_strict_score(generation, gold)}
    elif task.metric == "letter":
        letters = task.extra[0] if task.extra else "ABCD"
        m = re.search(f"[{letters}]", generation)
        rec["pred"] = m.group(0) if m else ""
        request["filtered"] = {"letter": rec["pred"]}
        rec["metrics"] = {"accuracy": float(rec["pred"] == gold)}
    elif task.metric == "humaneval":
        from .sandbox import check_humaneval

        result = check_humaneval(row, generation, allow_execution=allow_code_execution)
        rec["pred"] = result.status
        rec["execution"] = {"status": result.status, "message": result.message[-500:]}
        rec["metrics"] = {"pass@1": float(result.passed)}
    else:
        rec["pred"] = generation.strip()
        request["filtered"] = {"strip": rec["pred"]}
        rec["metrics"] = {"exact_match": metrics.exact_match(generation.strip(), str(gold).strip())}
    if task.group:
        rec["group"] = task.group(row)
    return rec


def aggregate(samples: Iterable[dict]) -> dict[str, dict]:
    """metric -> {"value", "stderr", "n"} over sample records; grouped tasks (MMLU) also get
    per-group values and both averages (micro is what lm-eval reports for mmlu)."""
    samples = list(samples)
    values: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        for name, v in s["metrics"].items():
            values[name].append(float(v))
            if "group" in s:
                groups[name][s["group"]].append(float(v))
    out: dict[str, dict] = {}
    for name, vals in values.items():
        out[name] = {"value": metrics.mean(vals), "stderr": metrics.mean_stderr(vals), "n": len(vals)}
        if name in groups and len(groups[name]) > 1:
            g = metrics.group_scores(groups[name])
            out[name]["macro"] = g.macro
            out[name]["groups"] = {s.name: s.mean for s in g.subjects}
    suite_scoring.extend_aggregate(samples, out)
    return out
