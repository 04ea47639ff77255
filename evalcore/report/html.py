"""The HTML report: one self-contained file (styles, script, charts and data inline; no URL is
fetched when it is opened). Summary table with the best model per row marked, charts (bars with
error bars per dataset, a heat map per grouped dataset, line charts over few-shot settings or
model sizes of one family), a sample browser, and the run's provenance.

The template is `evalcore/report/templates/report.html.j2` (Jinja2); charts come from `evalcore.report.charts`
(matplotlib SVG). Both are imported only here, so only `report --format html` needs them."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence

from evalcore.engine.security import report_notes
from evalcore.errors import ReportError
from evalcore.report.data import primary_metric, summary_grid

NEEDS = "pip install 'cachekit-evalcore[report]' (Jinja2 and matplotlib)"


def template_env(charts: bool = True):
    """The Jinja2 environment of the package templates (autoescaped, strict); with `charts`,
    matplotlib must be installed too."""
    try:
        import jinja2

        if charts:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportError(f"the HTML report needs {exc.name}, which is not installed", hint=NEEDS) from None
    env = jinja2.Environment(loader=jinja2.PackageLoader("evalcore.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.2f}"
    env.filters["tojson_script"] = _script_json
    env.filters["pretty"] = lambda v: json.dumps(v, indent=1, ensure_ascii=False, sort_keys=True, default=str)
    return env


# ---- which charts ---------------------------------------------------------------------------

_SIZE = re.compile(r"(?i)(?<![a-z0-9])(\d+(?:\.\d+)?)([kmbt])(?![a-z])")
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def model_family(path: str) -> tuple[str, float] | None:
    """('smollm2--instruct', 1.35e8) for 'HuggingFaceTB/SmolLM2-135M-Instruct': the name without
    its size token, and the size. None when the name carries no size."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    m = _SIZE.search(name)
    if not m:
        return None
    return (name[:m.start()] + name[m.end():]).lower(), float(m.group(1)) * _SCALE[m.group(2).lower()]


def families(models: Mapping[str, str]) -> list[list[str]]:
    """Groups of two or more models (name -> path) of one family, each ordered by size."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for name, path in models.items():
        fam = model_family(path) or model_family(name)
        if fam:
            groups.setdefault(fam[0], []).append((fam[1], name))
    return [[n for _, n in sorted(g)] for g in groups.values() if len({s for s, _ in g}) > 1]


def fewshot_groups(specs: Sequence, fewshots: Mapping[str, int]) -> list[list[str]]:
    """Datasets of the plan that differ only in their few-shot setting (two or more values),
    each group ordered by the number of shots."""
    groups: dict[str, list[str]] = {}
    for s in specs:  # the spec's repr: it holds mappings, which do not hash
        key = repr(dataclasses.replace(s, abbr="", fewshot=0, fewshot_split=None))
        groups.setdefault(key, []).append(s.abbr)
    return [sorted(g, key=lambda a: fewshots[a]) for g in groups.values()
            if len({fewshots[a] for a in g}) > 1]


def _value(rows, dataset: str, model: str, metric: str, subtask: str = ""):
    for r in rows:
        if (r["dataset"], r["model"], r["metric"], r["subtask"]) == (dataset, model, metric, subtask):
            return r
    return None


def charts(data: Mapping, plan) -> list[dict]:
    """Every chart of the report: {kind, title, svg}."""
    from evalcore.report import charts as ch

    rows, models = data["rows"], data["models"]
    out = []
    primary = {}
    for d in data["datasets"]:
        names = sorted({r["metric"] for r in rows if r["dataset"] == d and not r["subtask"]})
        primary[d] = primary_metric(names)
        if primary[d] is None:
            continue
        cells = [_value(rows, d, m, primary[d]) for m in models]
        out.append({"kind": "bars", "title": f"{d}: {primary[d]}",
                    "svg": ch.bars(d, primary[d], models, [c["value"] if c else None for c in cells],
                                   [c["stderr"] if c else None for c in cells])})
    for d in data["datasets"]:
        vals = {(r["subtask"], r["model"]): r["value"] for r in rows
                if r["dataset"] == d and r["subtask"] and r["metric"] == primary[d]}
        every = sorted({sub for sub, _ in vals})
        for level, subs in (("subtask", [x for x in every if not x.startswith("category:")]),
                            ("category", [x for x in every if x.startswith("category:")])):
            if subs:  # MMLU: one heat map of the 57 subjects, one of the four categories
                out.append({"kind": "heatmap", "title": f"{d}: {primary[d]} per {level}",
                            "svg": ch.heatmap(f"{d} per {level}", primary[d], subs, models, vals)})
    tasks = data["tasks"]
    for group in fewshot_groups(plan.datasets, {a: t.fewshot for a, t in tasks.items()}):
        metric = primary[group[0]]
        series = {m: [(_value(rows, d, m, metric) or {}).get("value") for d in group] for m in models}
        out.append({"kind": "lines", "title": f"{' / '.join(group)}: {metric} by few-shot setting",
                    "svg": ch.lines(f"{metric} by number of shots", "shots", metric,
                                    [str(tasks[d].fewshot) for d in group], series)})
    for fam in families({m.name: m.path for m in plan.models}):
        series = {d: [(_value(rows, d, m, primary[d]) or {}).get("value") for m in fam]
                  for d in data["datasets"] if primary[d]}
        out.append({"kind": "lines", "title": f"{', '.join(fam)}: one family by size",
                    "svg": ch.lines("one model family by size", "model", "primary metric", fam, series)})
    return out


# ---- samples --------------------------------------------------------------------------------

def _golds(gold, n: int) -> set[int]:
    if isinstance(gold, bool):
        return set()
    if isinstance(gold, int):
        return {gold}
    if isinstance(gold, list):
        return {g for g in gold if isinstance(g, int)}
    return set()


def sample_view(rec: Mapping) -> dict:
    """What the sample browser shows of one record (compact keys: it is embedded as JSON)."""
    m = rec.get("metrics") or {}
    key = primary_metric(list(m))
    out = {"m": rec["model"], "d": rec["dataset"], "i": rec.get("index"), "p": rec.get("prompt", ""),
           "mt": m, "ok": None if key is None else m[key] == 1.0, "gr": rec.get("group")}
    if "logprobs" in rec:
        choices = rec.get("choices") or [c.strip() for c in rec.get("continuations") or []]
        golds = _golds(rec.get("gold"), len(choices))
        if isinstance(rec.get("gold"), str) and rec["gold"] in choices:
            golds = {choices.index(rec["gold"])}
        out["c"] = [{"t": c, "ll": ll, "pr": i == rec.get("pred"), "pn": i == rec.get("pred_norm"), "g": i in golds}
                    for i, (c, ll) in enumerate(zip(choices, rec["logprobs"], strict=False))]
    else:
        out["gen"] = rec.get("generation", "")
        out["pred"] = rec.get("pred")
        out["gold"] = rec.get("gold")
        if rec.get("execution"):
            out["ex"] = rec["execution"]
    return out


def samples_for(ctx, ledger, version: Mapping | None) -> dict:
    """The sample browser's data, scored as the shown results version scored them: the records,
    and each distinct prompt once (models share a dataset's prompts), records pointing at it."""
    from evalcore.engine.rescore import scored_samples

    prompts: dict[str, int] = {}
    records = []
    for rec in scored_samples(ctx, ledger, version):
        view = sample_view(rec)
        view["p"] = prompts.setdefault(view["p"], len(prompts))
        records.append(view)
    return {"prompts": list(prompts), "samples": records}


def _script_json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_report(ctx, ledger, data: Mapping) -> str:
    from evalcore.report import provenance

    template = template_env().get_template("report.html.j2")
    samples = samples_for(ctx, ledger, data["version"])
    return template.render(
        run_id=ctx.run_id, note=data["note"], warnings=report_notes(ctx.security),
        models=data["models"], datasets=data["datasets"],
        grid=summary_grid(data["rows"], data["models"]), charts=charts(data, ctx.plan), samples=samples,
        prov=provenance.gather(ctx, ledger))
