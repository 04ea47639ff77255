"""How the standard suite's entries (evalcore/benchmarks/suite.py) score a sample and aggregate,
as lm-evaluation-harness 0.4.13 does for the same tasks; `winograd_ppl` as OpenCompass's PPL
inferencer does. evalcore.benchmarks.scores dispatches here on `Task.metric`. Pure (MBPP's code runs in
evalcore.scoring.sandbox, only when the dataset allows it).

Metric names:
- `acc_only`: acc of the highest log-likelihood choice (tasks whose metric_list is acc alone).
- `mc2`: TruthfulQA MC2 (truthfulqa/utils.py `process_results_mc2`): the normalised probability
  mass of the true answers, reported as acc.
- `ppl`: OpenCompass PPL: the choice with the lowest mean negative log-likelihood per token.
- `lambada`: loglikelihood tasks: `perplexity` (aggregated as exp(-mean)) and `acc` (greedy).
- `gsm8k_cot`, `bbh_cot`: generation, lm-eval's filters and exact_match.
- `mbpp`: pass@1 of the generation run against the row's three asserts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from evalcore.scoring import metrics

from .mmlu_categories import CATEGORY_OF_SUBJECT

CHOICE_METRICS = ("acc_only", "mc2", "ppl")
LOGLIK_METRICS = ("lambada",)
GEN_METRICS = ("gsm8k_cot", "bbh_cot", "mbpp")

GSM8K_COT_STRICT_REGEX = r"The answer is (\-?[0-9\.\,]+)."
BBH_COT_REGEX = r"(?<=the answer is )(.*)(?=.)"


def _argmax(values) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def score_choices(task, row: dict, reqs, logprobs: list[float], n_tokens: list[int] | None) -> tuple[dict, int]:
    """(metrics, predicted choice) of one multiple-choice row."""
    gold = reqs.gold
    golds = set(gold) if isinstance(gold, tuple) else {gold}
    if task.metric == "acc_only":
        pred = _argmax(logprobs)
        return {"acc": 1.0 if pred in golds else 0.0}, pred
    if task.metric == "mc2":
        import numpy as np

        probs = np.exp(np.array(logprobs))
        probs_norm = probs / np.sum(probs)
        labels = np.array(row["mc2_targets"]["labels"])
        return {"acc": float(np.sum(probs_norm[labels == 1]))}, _argmax(logprobs)
    if task.metric == "ppl":
        if n_tokens is None or len(n_tokens) != len(logprobs) or not all(n_tokens):
            raise ValueError("the ppl metric needs the token count of every choice")
        losses = [-lp / n for lp, n in zip(logprobs, n_tokens, strict=True)]
        pred = min(range(len(losses)), key=lambda i: losses[i])
        return {"acc": 1.0 if pred in golds else 0.0}, pred
    raise ValueError(f"unknown choice metric {task.metric!r}")


def score_loglik(task, logprob: float, greedy: bool) -> dict:
    if task.metric == "lambada":
        return {"perplexity": float(logprob), "acc": float(bool(greedy))}
    raise ValueError(f"unknown loglikelihood metric {task.metric!r}")


def score_generation(task, row: dict, generation: str, gold, *, allow_code_execution: bool) -> dict:
    """{"filtered": {filter: text}, "pred", "metrics"[, "execution"]} of one generated answer."""
    if task.metric == "gsm8k_cot":
        strict = metrics.regex_filter(generation, GSM8K_COT_STRICT_REGEX)
        flexible = metrics.regex_filter(generation, metrics.GSM8K_FLEXIBLE_REGEX, group_select=-1)

        def em(p: str) -> float:
            return metrics.exact_match(p, gold, regexes_to_ignore=metrics.GSM8K_REGEXES_TO_IGNORE, ignore_case=True)

        return {"filtered": {"strict-match": strict, "flexible-extract": flexible}, "pred": strict,
                "metrics": {"exact_match,strict-match": em(strict), "exact_match,flexible-extract": em(flexible)}}
    if task.metric == "bbh_cot":
        answer = metrics.regex_filter(generation, BBH_COT_REGEX)
        return {"filtered": {"get-answer": answer}, "pred": answer,
                "metrics": {"exact_match,get-answer": metrics.exact_match(answer, gold)}}
    if task.metric == "mbpp":
        from evalcore.scoring.sandbox import run_program

        result = run_program(mbpp_program(generation, gold), allow_execution=allow_code_execution)
        return {"filtered": {}, "pred": result.status, "metrics": {"pass@1": float(result.passed)},
                "execution": {"status": result.status, "message": result.message[-500:]}}
    raise ValueError(f"unknown generation metric {task.metric!r}")


def mbpp_program(generation: str, tests: str) -> str:
    """What lm-eval's MBPP pass@1 runs (HF `code_eval`): the generation, a newline, the asserts."""
    return generation + "\n" + tests


# -- groups above the per-row group (MMLU's four categories) ------------------------------------

CATEGORY = {"mmlu_ppl": lambda row: CATEGORY_OF_SUBJECT.get(row.get("subject", ""))}


def category(task, row: dict) -> str | None:
    fn = CATEGORY.get(task.name)
    return fn(row) if fn else None


# -- aggregation ------------------------------------------------------------------------------

def extend_aggregate(samples: Iterable[dict], out: dict[str, dict]) -> None:
    """Add per-category figures to `aggregate`'s output (MMLU: lm-eval's stem, humanities,
    social_sciences, other): `categories` (category -> mean) and `category_stats` (value,
    stderr, n), which become result rows with subtask `category:<name>`."""
    cats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if "category" not in s:
            continue
        for name, v in s["metrics"].items():
            if not isinstance(v, list):
                cats[name][s["category"]].append(float(v))
    for name, by_cat in cats.items():
        if name in out:
            out[name]["categories"] = {c: metrics.mean(v) for c, v in sorted(by_cat.items())}
            out[name]["category_stats"] = {c: {"value": metrics.mean(v), "stderr": metrics.mean_stderr(v), "n": len(v)}
                                           for c, v in sorted(by_cat.items())}
