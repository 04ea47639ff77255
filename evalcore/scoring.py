"""Per-sample scores and their aggregation: from a task, a row and the model's output to the
sample record stored in the ledger, and from sample records to the summary. Pure."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from . import metrics
from .tasks import Task


def score_ll(task: Task, row: dict, index: int, prompt: str, choices: list[str], logprobs: list[float],
             greedy: list[bool]) -> dict:
    gold = task.target(row)
    pred, pred_norm = metrics.choose(logprobs, choices)
    rec = {"index": index, "prompt": prompt, "choices": choices,
           "continuations": [task.target_delimiter + c for c in choices], "logprobs": logprobs,
           "greedy": greedy, "pred": pred, "pred_norm": pred_norm, "gold": gold,
           "metrics": metrics.mc_scores(logprobs, choices, gold)}
    if task.group:
        rec["group"] = task.group(row)
    return rec


def score_gen(task: Task, row: dict, index: int, prompt: str, generation: str, *,
              allow_code_execution: bool = False) -> dict:
    gold = task.target(row)
    rec = {"index": index, "prompt": prompt, "generation": generation, "gold": gold}
    if task.metric == "gsm8k":
        rec["pred"] = metrics.regex_filter(generation, metrics.GSM8K_STRICT_REGEX)
        rec["metrics"] = metrics.gsm8k_scores(generation, gold)
    elif task.metric == "bbh":
        rec["pred"] = generation.strip()
        rec["metrics"] = {"exact_match": metrics.bbh_zeroshot_strict_score(generation, gold)}
    elif task.metric == "letter":
        letters = task.extra[0] if task.extra else "ABCD"
        m = re.search(f"[{letters}]", generation)
        rec["pred"] = m.group(0) if m else ""
        rec["metrics"] = {"accuracy": float(rec["pred"] == gold)}
    elif task.metric == "humaneval":
        from .sandbox import check_humaneval

        result = check_humaneval(row, generation, allow_execution=allow_code_execution)
        rec["pred"] = result.status
        rec["execution"] = {"status": result.status, "message": result.message[-500:], "isolation": result.isolation}
        rec["metrics"] = {"pass@1": float(result.passed)}
    else:
        rec["pred"] = generation.strip()
        rec["metrics"] = {"exact_match": metrics.exact_match(generation.strip(), str(gold).strip())}
    return rec


def aggregate(samples: Iterable[dict]) -> dict[str, dict]:
    """metric -> {"value", "stderr", "n"} over sample records; grouped tasks (MMLU) also get
    per-group values and both averages (micro is what lm-eval reports for mmlu)."""
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
    return out
