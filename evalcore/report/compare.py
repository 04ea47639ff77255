"""Two runs side by side: per model x dataset x metric, both scores (each run's newest results
version), the difference, and a paired test on the samples both runs scored (same model name,
dataset and sample index): McNemar's exact test where every per-sample score is 0 or 1, a paired
bootstrap (fixed seed) otherwise. A difference whose p-value is at or above `alpha` is flagged
as within noise. Pure apart from `compare_runs`."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 1234
FIELDS = ("model", "dataset", "metric", "a", "b", "diff", "n_a", "n_b", "n_shared", "test", "p_value", "verdict")


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 scores: a binomial test on the discordant
    pairs (right in one run only), p = min(1, 2 * P(X <= min(n01, n10))), X ~ Bin(n01 + n10, 1/2)."""
    n01 = sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1)
    n10 = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0)
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], rounds: int = BOOTSTRAP_ROUNDS,
                     seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided paired bootstrap p-value of mean(b - a) != 0: resample the per-sample
    differences with replacement (random.Random(seed)); p = 2 * the smaller share of resampled
    means on either side of 0 (capped at 1)."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    if not diffs or all(d == 0 for d in diffs):
        return 1.0
    rnd = random.Random(seed)
    n = len(diffs)
    le = ge = 0
    for _ in range(rounds):
        m = sum(diffs[rnd.randrange(n)] for _ in range(n)) / n
        le += m <= 0
        ge += m >= 0
    return min(1.0, 2 * min(le, ge) / rounds)


def paired_test(a: Sequence[float], b: Sequence[float]) -> tuple[str, float]:
    if all(x in (0.0, 1.0) for x in (*a, *b)):
        return "mcnemar", mcnemar_exact(a, b)
    return "bootstrap", paired_bootstrap(a, b)


def compare(results_a: Sequence[Mapping], results_b: Sequence[Mapping],
            per_sample_a: Mapping[tuple[str, str], Mapping[int, Mapping[str, float]]],
            per_sample_b: Mapping[tuple[str, str], Mapping[int, Mapping[str, float]]],
            alpha: float = 0.05) -> list[dict]:
    """Rows for every (model, dataset, metric) with a whole-dataset result in both runs."""
    a = {(r["model_key"], r["dataset_key"], r["metric"]): r for r in results_a}
    b = {(r["model_key"], r["dataset_key"], r["metric"]): r for r in results_b}
    rows = []
    for key in sorted(set(a) & set(b), key=lambda k: (k[1], k[2], k[0])):
        model, dataset, metric = key
        ra, rb = a[key], b[key]
        sa, sb = per_sample_a.get((model, dataset), {}), per_sample_b.get((model, dataset), {})
        shared = sorted(i for i in set(sa) & set(sb) if metric in sa[i] and metric in sb[i])
        diff = None if ra["value"] is None or rb["value"] is None else rb["value"] - ra["value"]
        test, p = None, None
        if shared:
            test, p = paired_test([float(sa[i][metric]) for i in shared], [float(sb[i][metric]) for i in shared])
        verdict = "no paired test" if p is None else ("within noise" if p >= alpha else "significant")
        rows.append({"model": model, "dataset": dataset, "metric": metric, "a": ra["value"], "b": rb["value"],
                     "diff": diff, "n_a": ra["n"], "n_b": rb["n"], "n_shared": len(shared), "test": test,
                     "p_value": p, "verdict": verdict})
    return rows


def per_sample(ctx, ledger, version) -> dict[tuple[str, str], dict[int, dict[str, float]]]:
    """(model, dataset) -> sample index -> its metrics, as the given results version scored them."""
    from evalcore.engine.rescore import scored_samples

    out: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for rec in scored_samples(ctx, ledger, version):
        out.setdefault((rec["model"], rec["dataset"]), {})[rec["index"]] = rec.get("metrics") or {}
    return out


def compare_runs(ctx_a, ledger_a, ctx_b, ledger_b, alpha: float = 0.05) -> dict:
    sides = []
    for ctx, ledger in ((ctx_a, ledger_a), (ctx_b, ledger_b)):
        versions = ledger.result_versions(ctx.run_id)
        newest = versions[-1] if versions else None
        sides.append({"run_id": ctx.run_id, "run_dir": str(ctx.run_dir), "results_version": newest,
                      "results": ledger.results(ctx.run_id, newest["version"] if newest else None),
                      "samples": per_sample(ctx, ledger, newest)})
    rows = compare(sides[0]["results"], sides[1]["results"], sides[0]["samples"], sides[1]["samples"], alpha)
    return {"a": {k: v for k, v in sides[0].items() if k not in ("results", "samples")},
            "b": {k: v for k, v in sides[1].items() if k not in ("results", "samples")},
            "alpha": alpha, "rows": rows}


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def text_rows(doc: Mapping) -> list[dict]:
    """Rows for the table/md/html formats (percent, signed difference, p-value)."""
    return [{"model": r["model"], "dataset": r["dataset"], "metric": r["metric"], "A": _pct(r["a"]),
             "B": _pct(r["b"]), "B-A": _pct(r["diff"], signed=True), "shared": r["n_shared"],
             "test": r["test"] or "-", "p": "-" if r["p_value"] is None else f"{r['p_value']:.4g}",
             "verdict": r["verdict"]}
            for r in doc["rows"]]


def render(doc: Mapping, fmt: str) -> str:
    import json

    from evalcore.report.tables import render as render_rows

    if fmt == "json":
        return json.dumps(doc, indent=1)
    if fmt == "html":
        return render_html(doc)
    head = f"A = run {doc['a']['run_id']}, B = run {doc['b']['run_id']}; within noise: p >= {doc['alpha']}"
    body = render_rows(text_rows(doc), fmt) if doc["rows"] else "(no model x dataset has results in both runs)"
    return head + "\n\n" + body


def render_html(doc: Mapping) -> str:
    from evalcore.report.html import template_env

    return template_env(charts=False).get_template("compare.html.j2").render(doc=doc, rows=text_rows(doc))
