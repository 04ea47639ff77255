"""Per-sample scores and their aggregation: from a task, a row and the model's output to the
sample record stored in the ledger, and from sample records to the summary. Pure."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

from evalcore.benchmarks import suite_scoring
from evalcore.benchmarks.definition import Task
from evalcore.benchmarks.rows import Requests
from evalcore.scoring import metrics


def score_ll(task: Task, row: dict, index: int, reqs: Requests, logprobs: list[float], greedy: list[bool],
             n_tokens: list[int] | None = None) -> dict:
    """A multiple-choice row (one request per choice, or per context in the multiple-input form)."""
    requests = _ll_requests(reqs, logprobs, greedy)
    gold = reqs.gold
    if task.metric in suite_scoring.CHOICE_METRICS:
        rec_metrics, pred = suite_scoring.score_choices(task, row, reqs, logprobs, n_tokens)
    elif task.metric == "lmeval":
        from evalcore.benchmarks.lmeval_scoring import score_multiple_choice

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
        from evalcore.benchmarks.lmeval_scoring import score_loglikelihood

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
              allow_code_execution: bool = False, code_sandbox: str = "namespaces") -> dict:
    gold = reqs.gold
    prompt = reqs.contexts[0]
    request = {"context": prompt, "generation": generation}
    rec = {"index": index, "requests": [request], "gold": list(gold) if isinstance(gold, tuple) else gold}
    if task.metric in suite_scoring.GEN_METRICS:
        got = suite_scoring.score_generation(task, row, generation, gold, allow_code_execution=allow_code_execution)
        request["filtered"], rec["pred"], rec["metrics"] = got["filtered"], got["pred"], got["metrics"]
        rec.update({"execution": got["execution"]} if "execution" in got else {})
    elif task.metric == "lmeval":
        from evalcore.benchmarks.lmeval_scoring import score_generation

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
        from evalcore.scoring.sandbox import check_humaneval

        result = check_humaneval(row, generation, allow_execution=allow_code_execution, isolation=code_sandbox)
        rec["pred"] = result.status
        rec["execution"] = {"status": result.status, "message": result.message[-500:], "sandbox": result.isolation}
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
    per-group values and both averages (micro is what lm-eval reports for mmlu). Perplexities
    aggregate as lm-eval does (lm_eval/api/metrics.py: `perplexity` = exp(-mean ll),
    `weighted_perplexity` = exp(-sum ll / sum weight), `bits_per_byte` = -sum ll / sum bytes / ln 2)."""
    values: dict[str, list] = defaultdict(list)
    samples = list(samples)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        for name, v in s["metrics"].items():
            values[name].append(v if isinstance(v, list) else float(v))
            if "group" in s and not isinstance(v, list):
                groups[name][s["group"]].append(float(v))
    out: dict[str, dict] = {}
    for name, vals in values.items():
        if name in PERPLEXITIES:
            out[name] = {"value": PERPLEXITIES[name](vals), "stderr": None, "n": len(vals)}
            continue
        out[name] = {"value": metrics.mean(vals), "stderr": metrics.mean_stderr(vals), "n": len(vals)}
        if name in groups and len(groups[name]) > 1:
            g = metrics.group_scores(groups[name])
            out[name]["macro"] = g.macro
            out[name]["groups"] = {s.name: s.mean for s in g.subjects}
            out[name]["group_stats"] = {s.name: {"value": s.mean, "stderr": s.stderr, "n": s.size}
                                        for s in g.subjects}
    suite_scoring.extend_aggregate(samples, out)
    return out


def result_rows(model: str, dataset: str, samples: Iterable[dict]) -> list[dict]:
    """The ledger's result rows of one model x dataset: each metric (value, stderr, n), the
    macro average of a grouped task as `<metric>_macro`, one row per group (subtask: an MMLU
    subject, a BBH task) and one per category (subtask `category:stem`, ...)."""
    rows = []
    for metric, agg in aggregate(samples).items():
        base = {"model_key": model, "dataset_key": dataset}
        rows.append({**base, "metric": metric, "value": agg["value"], "stderr": agg["stderr"], "n": agg["n"]})
        if "macro" in agg:
            rows.append({**base, "metric": f"{metric}_macro", "value": agg["macro"], "stderr": None, "n": agg["n"]})
        for group, st in agg.get("group_stats", {}).items():
            rows.append({**base, "subtask": group, "metric": metric, **st})
        for cat, st in agg.get("category_stats", {}).items():  # MMLU's four categories
            rows.append({**base, "subtask": f"category:{cat}", "metric": metric, **st})
    return rows


def _perplexity(vals: list) -> float:
    return math.exp(-metrics.mean([float(v) for v in vals]))


def _weighted_perplexity(vals: list) -> float:
    return math.exp(-sum(v[0] for v in vals) / sum(v[1] for v in vals))


def _bits_per_byte(vals: list) -> float:
    return -sum(v[0] for v in vals) / sum(v[1] for v in vals) / math.log(2)


PERPLEXITIES = {"perplexity": _perplexity, "word_perplexity": _weighted_perplexity,
                "byte_perplexity": _weighted_perplexity, "bits_per_byte": _bits_per_byte}


def group_rows(plan, rows: list[dict]) -> list[dict]:
    """lm-eval group aggregates (aggregate_metric_list: weight_by_size, mean) over the member
    tasks' results, per model; a group is scored only when every member is. `rows` are the
    tasks' own rows (no subtask rows)."""
    members: dict[str, list] = {}
    for d in plan.datasets:
        for g, agg in d.groups.items():
            members.setdefault(g, [agg, []])[1].append(d.abbr)
    have = {(r["model_key"], r["dataset_key"], r["metric"]): r for r in rows}
    out = []
    for g, (agg, names) in members.items():
        for m in plan.models:
            for spec in agg:
                filters = spec.get("filter_list") or ["none"]
                for f in [filters] if isinstance(filters, str) else filters:
                    metric = spec["metric"] if f == "none" else f"{spec['metric']},{f}"
                    got = [have.get((m.name, n, metric)) for n in names]
                    if any(x is None for x in got):
                        continue
                    value = metrics.aggregate_subtask_metrics([x["value"] for x in got], [x["n"] for x in got],
                                                      weight_by_size=bool(spec.get("weight_by_size", True)))
                    out.append({"model_key": m.name, "dataset_key": g, "metric": metric, "value": value,
                                "stderr": None, "n": sum(x["n"] for x in got)})
    return out


def run_result_rows(plan, units: Mapping[tuple[str, str], Iterable[dict]]) -> list[dict]:
    """Every result row of a run from its finished units' sample records: each unit's rows
    (`result_rows`) and the lm-eval group aggregates over them. `eval` and `rescore` both
    compute results with this."""
    rows = [r for (model, dataset), samples in units.items() for r in result_rows(model, dataset, samples)]
    return rows + group_rows(plan, [r for r in rows if not r.get("subtask")])
