"""Tables from the ledger: progress (status), the summary users know from OpenCompass
(dataset, version, metric, mode, one column per model), failures, and per-sample predictions."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable

PRIMARY = ("acc", "exact_match,strict-match", "exact_match", "accuracy", "pass@1")


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress_table(rows: list[dict], now: float | None = None) -> str:
    now = now or time.time()
    total = sum(r["samples_total"] for r in rows)
    done = sum(r["samples_done"] for r in rows)
    started = [r["started_at"] for r in rows if r["started_at"]]
    eta = None
    if started and done and done < total:
        rate = done / max(1e-6, now - min(started))
        eta = (total - done) / rate
    lines = [f"{'model':24} {'dataset':22} {'samples':>13} {'parts done/run/pend/fail':>26}"]
    for r in rows:
        p = r["partitions"]
        lines.append(f"{r['model_key'][:24]:24} {r['dataset_key'][:22]:22} "
                     f"{r['samples_done']:>6}/{r['samples_total']:<6} "
                     f"{p['done']:>9}/{p['running']}/{p['pending']}/{p['failed']:<8}")
    pct = 100.0 * done / total if total else 100.0
    lines.append(f"total: {done}/{total} samples ({pct:.0f}%), ETA {_fmt_eta(eta) if done < total else 'done'}")
    return "\n".join(lines)


def failure_table(partitions: Iterable[dict]) -> str:
    bad = [p for p in partitions if p["status"] != "done"]
    if not bad:
        return ""
    lines = [f"{'partition':44} {'status':8} {'tries':>5}  error"]
    for p in bad:
        msg = (p.get("error_message") or "").splitlines()[0][:90] if p.get("error_message") else ""
        lines.append(f"{p['partition_id'][:44]:44} {p['status']:8} {p['attempts']:>5}  "
                     f"{p.get('error_class') or '-'}: {msg}")
    return "\n".join(lines)


def summary_rows(results: list[dict], partitions: list[dict], versions: dict[str, str],
                 modes: dict[str, str], models: list[str], datasets: list[str]) -> list[dict]:
    """One row per (dataset, metric) with a value (or '-') per model."""
    value = {(r["model_key"], r["dataset_key"], r["metric"]): r["value"] for r in results}
    metrics_of: dict[str, list[str]] = {}
    for r in results:
        names = metrics_of.setdefault(r["dataset_key"], [])
        if r["metric"] not in names:
            names.append(r["metric"])
    out = []
    for d in datasets:
        names = sorted(metrics_of.get(d, ["-"]), key=lambda m: (m not in PRIMARY, m))
        for metric in names:
            row = {"dataset": d, "version": versions.get(d, "-")[:6], "metric": metric, "mode": modes.get(d, "-")}
            for m in models:
                v = value.get((m, d, metric))
                row[m] = "-" if v is None else f"{100 * v:.2f}"
            out.append(row)
    return out


def render(rows: list[dict], fmt: str) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    if fmt == "md":
        head = "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |"
        sep = "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|"
        body = ["| " + " | ".join(str(r[c]).ljust(widths[c]) for c in cols) + " |" for r in rows]
        return "\n".join([head, sep, *body])
    head = "  ".join(c.ljust(widths[c]) for c in cols)
    return "\n".join([head, "  ".join("-" * widths[c] for c in cols),
                      *("  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows)])


# (path key, its fallback-reason key, what a user reads)
BACKEND_PATHS = (("packing", "packing_fallback", "shared-context packing"),
                 ("prefix_reuse", "prefix_fallback", "prefix reuse in scoring"),
                 ("generation", "generation_fallback", "refill generation"),
                 ("prefix_reuse_generation", "prefix_generation_fallback", "prefix reuse in generation"))


def backend_path_lines(rows: Iterable[dict]) -> list[str]:
    """One line per model with the paths its workers took, then one per fallback and its reason
    (rows: the ledger's backend_paths)."""
    taken: dict[str, dict[str, set[str]]] = {}
    falls: dict[str, dict[tuple[str, str], None]] = {}
    for r in rows:
        paths = r["paths"]
        for key, why, label in BACKEND_PATHS:
            if paths.get(key) is not None:
                taken.setdefault(r["model_key"], {}).setdefault(label, set()).add(str(paths[key]))
            if paths.get(why):
                falls.setdefault(r["model_key"], {})[(label, paths[why])] = None
    lines = []
    for model in sorted(taken):
        lines.append(f"{model}: " + ", ".join(f"{label} {'/'.join(sorted(v))}" for label, v in taken[model].items()))
        lines.extend(f"  fallback: {label} not used: {why}" for label, why in falls.get(model, {}))
    return lines


def sample_lines(samples: Iterable[tuple[str, int, str]], owner: dict[str, tuple[str, str]]) -> Iterable[str]:
    """Per-sample JSON lines: model, dataset, index, prompt, continuations + log-likelihoods or
    the generation, prediction, gold, per-sample metrics."""
    for pid, _idx, out in samples:
        rec = json.loads(out)
        model, dataset = owner[pid]
        yield json.dumps({"model": model, "dataset": dataset, **rec}, ensure_ascii=False)
