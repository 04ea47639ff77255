"""Recompute metrics from the stored per-sample outputs, with no model, tokenizer or GPU.

A multiple-choice sample keeps its choices and their log-likelihoods, a generation sample its
text and gold answer, so every metric can be computed again: with the task's own scorer (the
figures come out identical to the run's) or with another scorer / answer filter. The result is a
new results version in the ledger; the old ones stay. Pure, apart from `rescore_run`.

Scorers (`SCORERS`) and answer filters (`FILTERS`, plus `regex:PATTERN`) are registries; the
names are what `evalcore rescore --metric/--filter` take.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evalcore.errors import PlanError
from evalcore.scoring import metrics

if TYPE_CHECKING:
    from evalcore.plan.tasks import Task

HINT = "evalcore rescore --help lists the metrics and answer filters"

Filter = Callable[[str], str]


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


FILTERS: dict[str, Filter] = {
    "none": lambda text: text,
    "strip": str.strip,
    "first-line": _first_line,
    "strict-match": lambda text: metrics.regex_filter(text, metrics.GSM8K_STRICT_REGEX),
    "flexible-extract": lambda text: metrics.regex_filter(text, metrics.GSM8K_FLEXIBLE_REGEX, group_select=-1),
}


def answer_filter(name: str) -> Filter:
    """A filter by name; `regex:PATTERN` takes lm-eval's regex filter (first match, first
    non-empty group, "[invalid]" when nothing matches)."""
    if name.startswith("regex:"):
        pattern = name[len("regex:"):]
        try:
            re.compile(pattern)
        except re.error as exc:
            raise PlanError(f"--filter {name!r}: not a regular expression ({exc})", hint=HINT) from None
        return lambda text: metrics.regex_filter(text, pattern)
    if name not in FILTERS:
        raise PlanError(f"unknown answer filter {name!r} (known: {', '.join(FILTERS)}, regex:PATTERN)", hint=HINT)
    return FILTERS[name]


@dataclass(frozen=True)
class Scorer:
    """One way to score a stored sample: `score(record, task, filter) -> (pred, metrics)`."""

    name: str
    mode: str                          # "ll" or "gen": the samples it can score
    score: Callable[[dict, Task, Filter | None], tuple[object, dict[str, float]]]
    default_filter: str | None = None  # None: the scorer has its own extraction (no --filter)
    help: str = ""


def choice_texts(rec: dict, task: Task) -> list[str]:
    """The choice texts acc_norm measures: stored, or the scored continuations without the
    task's target delimiter."""
    if rec.get("choices") is not None:
        return list(rec["choices"])
    d = task.target_delimiter
    return [c[len(d):] if d and c.startswith(d) else c for c in rec["continuations"]]


def _acc(rec: dict, task: Task, _f: Filter | None) -> tuple[object, dict[str, float]]:
    choices = choice_texts(rec, task)
    pred, _ = metrics.choose(rec["logprobs"], choices)
    return pred, metrics.mc_scores(rec["logprobs"], choices, rec["gold"])


def _stored(rec: dict, task: Task, _f: Filter | None) -> tuple[object, dict[str, float]]:
    return rec.get("pred"), dict(rec.get("metrics") or {})


def _exact_match(rec: dict, task: Task, f: Filter | None) -> tuple[object, dict[str, float]]:
    answer = (f or str.strip)(rec["generation"])
    return answer, {"exact_match": metrics.exact_match(answer, str(rec["gold"]).strip())}


def _gsm8k(rec: dict, task: Task, _f: Filter | None) -> tuple[object, dict[str, float]]:
    gen = rec["generation"]
    return metrics.regex_filter(gen, metrics.GSM8K_STRICT_REGEX), metrics.gsm8k_scores(gen, rec["gold"])


def _bbh(rec: dict, task: Task, _f: Filter | None) -> tuple[object, dict[str, float]]:
    gen = rec["generation"]
    return gen.strip(), {"exact_match": metrics.bbh_zeroshot_strict_score(gen, rec["gold"])}


def _bbh_fewshot(rec: dict, task: Task, _f: Filter | None) -> tuple[object, dict[str, float]]:
    gen = rec["generation"]
    return gen, {"exact_match": metrics.bbh_fewshot_score(gen, rec["gold"])}


def _letter(rec: dict, task: Task, f: Filter | None) -> tuple[object, dict[str, float]]:
    letters = task.extra[0] if task.extra and task.metric == "letter" else "ABCD"
    m = re.search(f"[{re.escape(letters)}]", (f or FILTERS["none"])(rec["generation"]))
    pred = m.group(0) if m else ""
    return pred, {"accuracy": float(pred == rec["gold"])}


def _humaneval(rec: dict, task: Task, _f: Filter | None) -> tuple[object, dict[str, float]]:
    execution = rec.get("execution")
    if not isinstance(execution, dict) or "status" not in execution:
        raise PlanError(f"sample {rec.get('index')} has no stored execution result to rescore pass@1 from")
    return execution["status"], {"pass@1": float(execution["status"] == "passed")}


SCORERS: dict[str, Scorer] = {s.name: s for s in (
    Scorer("acc", "ll", _acc, help="acc and acc_norm from the stored log-likelihoods"),
    Scorer("exact_match", "gen", _exact_match, default_filter="strip",
           help="the filtered generation equals the gold answer (stripped)"),
    Scorer("gsm8k", "gen", _gsm8k, help="lm-eval GSM8K: strict-match and flexible-extract"),
    Scorer("bbh", "gen", _bbh, help="lm-eval BBH zero-shot strict match"),
    Scorer("bbh_fewshot", "gen", _bbh_fewshot, help="lm-eval BBH few-shot exact match"),
    Scorer("letter", "gen", _letter, default_filter="none", help="first choice letter in the answer"),
    Scorer("humaneval", "gen", _humaneval, help="pass@1 from the stored execution result"),
    Scorer("stored", "any", _stored, help="the per-sample scores as the run stored them"),
)}


def default_scorer(task: Task) -> str:
    """The scorer the run itself used for a task (what scoring.score_ll/score_gen apply), or
    `stored` (its per-sample scores as recorded) where this module has no rescorer for it."""
    name = "acc" if task.mode == "ll" and task.metric == "acc" else task.metric
    return name if name in SCORERS and SCORERS[name].mode == task.mode else "stored"


@dataclass(frozen=True)
class Choice:
    """What one dataset is rescored with."""

    scorers: tuple[str, ...]
    filter: str | None


def choose(tasks: Mapping[str, Task], metric_names: Sequence[str], filter_name: str | None,
           datasets: Sequence[str]) -> dict[str, Choice]:
    """Per dataset of the run, the scorers and filter to use. Named metrics replace the task's
    own on every selected dataset of their mode; a name, filter or dataset that takes effect
    nowhere is refused (PlanError), before anything is read."""
    unknown = [m for m in metric_names if m not in SCORERS]
    if unknown:
        raise PlanError(f"unknown metric {unknown[0]!r} (known: {', '.join(SCORERS)})", hint=HINT)
    missing = [d for d in datasets if d not in tasks]
    if missing:
        raise PlanError(f"dataset {missing[0]!r} is not in this run (it has: {', '.join(tasks)})", hint=HINT)
    if filter_name is not None:
        answer_filter(filter_name)
    selected = set(datasets or tasks)
    out: dict[str, Choice] = {}
    used_metrics: set[str] = set()
    filter_used = False
    for abbr, task in tasks.items():
        names = tuple(dict.fromkeys(m for m in metric_names if SCORERS[m].mode in (task.mode, "any"))) \
            if abbr in selected else ()
        used_metrics.update(names)
        names = names or (default_scorer(task),)
        takes_filter = [n for n in names if SCORERS[n].default_filter is not None]
        f = None
        if abbr in selected and filter_name is not None and takes_filter:
            f, filter_used = filter_name, True
        elif takes_filter:
            f = SCORERS[takes_filter[0]].default_filter
        out[abbr] = Choice(names, f)
    for m in metric_names:
        if m not in used_metrics:
            raise PlanError(f"metric {m!r} scores {SCORERS[m].mode} samples, and no selected dataset of this "
                            f"run has them", hint=HINT)
    if filter_name is not None and not filter_used:
        raise PlanError(f"--filter {filter_name!r} would change nothing: no selected dataset is scored by a "
                        f"metric that takes an answer filter ({', '.join(n for n, s in SCORERS.items() if s.default_filter)})", hint=HINT)
    return out


def rescore_record(rec: dict, task: Task, choice: Choice) -> dict:
    """The sample record with `pred` and `metrics` recomputed (other fields unchanged)."""
    f = answer_filter(choice.filter) if choice.filter else None
    pred, scores = None, {}
    for name in choice.scorers:
        p, m = SCORERS[name].score(rec, task, f)
        clash = set(m) & set(scores)
        if clash:
            raise PlanError(f"metrics {', '.join(choice.scorers)} both give {sorted(clash)[0]!r}; rescore them one at a time")
        pred = p if pred is None else pred
        scores.update(m)
    return {**rec, "pred": pred, "metrics": scores}


def settings_of(choices: Mapping[str, Choice], metric_names: Sequence[str], filter_name: str | None,
                datasets: Sequence[str]) -> dict:
    """What a rescore version records about how it was made (also how the report re-derives its
    per-sample metrics)."""
    return {"requested": {"metrics": list(metric_names), "filter": filter_name, "datasets": list(datasets)},
            "datasets": {d: {"metrics": list(c.scorers), "filter": c.filter} for d, c in choices.items()}}


def choices_from_settings(settings: Mapping) -> dict[str, Choice]:
    return {d: Choice(tuple(c["metrics"]), c.get("filter")) for d, c in settings.get("datasets", {}).items()}


def rescore_run(ctx, ledger, metric_names: Sequence[str] = (), filter_name: str | None = None,
                datasets: Sequence[str] = (), *, now: float) -> tuple[int, list[tuple[str, str]]]:
    """Rescore every finished model x dataset of a run into a new results version.
    Returns (version, the units skipped because they did not finish)."""
    from evalcore.benchmarks.scores import run_result_rows
    from evalcore.engine.samples import by_unit, complete_units

    tasks = ctx.tasks()
    choices = choose(tasks, metric_names, filter_name, datasets)
    parts = ledger.partitions(ctx.run_id)
    done = complete_units(parts)
    skipped = sorted({(p["model_key"], p["dataset_key"]) for p in parts} - done)
    units = {(model, dataset): [rescore_record(r, tasks[dataset], choices[dataset]) for r in recs]
             for (model, dataset), recs in by_unit(ledger, ctx.run_id).items()}
    rows = run_result_rows(ctx.plan, units)
    if not rows:
        raise PlanError(f"run {ctx.run_id} has no finished model x dataset to rescore",
                        hint=f"finish it first: evalcore resume {ctx.run_dir}")
    version = ledger.add_results_version(ctx.run_id, rows, kind="rescore",
                                         settings=settings_of(choices, metric_names, filter_name, datasets), now=now)
    return version, skipped


def scored_samples(ctx, ledger, version: Mapping | None):
    """The run's sample records with the per-sample metrics of a results version: as stored for
    an eval version, recomputed with the recorded scorers and filters for a rescore version."""
    from evalcore.engine.samples import read_samples

    if version is None or version["kind"] != "rescore":
        yield from read_samples(ledger, ctx.run_id)
        return
    choices = choices_from_settings(version["settings"])
    tasks = ctx.tasks()
    for rec in read_samples(ledger, ctx.run_id):
        c = choices.get(rec["dataset"])
        yield rescore_record(rec, tasks[rec["dataset"]], c) if c else rec
