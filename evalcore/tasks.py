"""Task definitions: how a dataset row becomes a prompt, its choices or stop strings, its gold
answer and its metric. Pure functions over rows; no I/O, no heavy imports.

Built-in tasks follow lm-evaluation-harness 0.4.13's definitions where it has one (see
docs/crosscheck.md); names follow OpenCompass (`arc_easy_ppl`, `gsm8k_gen`, ...). A task's
`version` hashes its code and settings, so a changed prompt changes every key that depends on it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import PlanError
from .plan import DatasetSpec

Row = dict


@dataclass(frozen=True)
class Task:
    name: str
    mode: str  # "ll": score choices by log-likelihood; "gen": generate
    text: Callable[[Row], str]
    target: Callable[[Row], int | str]  # ll: index of the gold choice; gen: gold answer text
    choices: Callable[[Row], list[str]] | None = None
    target_text: Callable[[Row], str] | None = None  # few-shot examples: the answer as written
    description: Callable[[Row], str] | None = None
    target_delimiter: str = " "
    fewshot: int = 0
    fewshot_split: str | None = None
    fewshot_delimiter: str = "\n\n"
    sampler: str = "first_n"  # "first_n", or "random" (lm-eval's default: Random(1234), draws carried over)
    fewshot_seed: int = 1234
    stop: tuple[str, ...] = ()
    max_out_len: int | None = None
    metric: str = "acc"  # acc | gsm8k | bbh | exact_match | letter | humaneval
    group: Callable[[Row], str] | None = None  # per-group averages (MMLU subjects)
    needs_execution: bool = False
    extra: tuple = field(default=())

    @property
    def version(self) -> str:
        """A short hash of everything that shapes the prompts and scores of this task."""
        parts = [self.name, self.mode, self.target_delimiter, str(self.fewshot), str(self.fewshot_split),
                 self.fewshot_delimiter, self.sampler, str(self.fewshot_seed), repr(self.stop), str(self.max_out_len), self.metric, repr(self.extra)]
        for fn in (self.text, self.target, self.choices, self.target_text, self.description, self.group):
            parts.append(_source(fn))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def _source(fn) -> str:
    if fn is None:
        return "-"
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return repr(fn)


# -- built-in tasks ------------------------------------------------------------------------------

def _arc_text(d: Row) -> str:
    return f"Question: {d['question']}\nAnswer:"


def _arc_choices(d: Row) -> list[str]:
    return list(d["choices"]["text"])


def _arc_target(d: Row) -> int:
    return list(d["choices"]["label"]).index(d["answerKey"])


def _piqa_text(d: Row) -> str:
    return f"Question: {d['goal']}\nAnswer:"


def _piqa_choices(d: Row) -> list[str]:
    return [d["sol1"], d["sol2"]]


def _piqa_target(d: Row) -> int:
    return int(d["label"])


def _siqa_text(d: Row) -> str:
    return f"Q: {d['context']} {d['question']}\nA:"


def _siqa_choices(d: Row) -> list[str]:
    return [d["answerA"], d["answerB"], d["answerC"]]


def _siqa_target(d: Row) -> int:
    return int(d["label"]) - 1


def _siqa_gen_text(d: Row) -> str:
    return (f"{d['context']}\nQuestion: {d['question']}\nA. {d['answerA']}\nB. {d['answerB']}\n"
            f"C. {d['answerC']}\nAnswer:")


def _siqa_gen_target(d: Row) -> str:
    return "ABC"[int(d["label"]) - 1]


def _mmlu_description(d: Row) -> str:
    subject = d["subject"].replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _mmlu_text(d: Row) -> str:
    c = d["choices"]
    return f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def _mmlu_choices(d: Row) -> list[str]:
    return ["A", "B", "C", "D"]


def _mmlu_target(d: Row) -> int:
    return int(d["answer"])


def _mmlu_group(d: Row) -> str:
    return d["subject"]


def _gsm8k_text(d: Row) -> str:
    return f"Question: {d['question']}\nAnswer:"


def _gsm8k_target(d: Row) -> str:
    return d["answer"]


def _bbh_text(d: Row) -> str:
    return f"Q: {d['input']}\nA:"


def _bbh_target(d: Row) -> str:
    return d["target"]


def _humaneval_text(d: Row) -> str:
    return d["prompt"]


def _humaneval_target(d: Row) -> str:
    return d["task_id"]


BUILTIN: dict[str, Task] = {
    "arc_easy_ppl": Task("arc_easy_ppl", "ll", _arc_text, _arc_target, _arc_choices),
    "arc_challenge_ppl": Task("arc_challenge_ppl", "ll", _arc_text, _arc_target, _arc_choices),
    "piqa_ppl": Task("piqa_ppl", "ll", _piqa_text, _piqa_target, _piqa_choices),
    "siqa_ppl": Task("siqa_ppl", "ll", _siqa_text, _siqa_target, _siqa_choices),
    "siqa_gen": Task("siqa_gen", "gen", _siqa_gen_text, _siqa_gen_target, stop=("\n",), max_out_len=16,
                     metric="letter", extra=("ABC",)),
    "mmlu_ppl": Task("mmlu_ppl", "ll", _mmlu_text, _mmlu_target, _mmlu_choices, description=_mmlu_description,
                     fewshot_split="dev", group=_mmlu_group),
    "gsm8k_gen": Task("gsm8k_gen", "gen", _gsm8k_text, _gsm8k_target, target_text=_gsm8k_target, fewshot=5,
                      fewshot_split="train", sampler="random", stop=("Question:", "</s>", "<|im_end|>"), max_out_len=256,
                      metric="gsm8k"),
    "bbh_gen": Task("bbh_gen", "gen", _bbh_text, _bbh_target, stop=("</s>", "Q:", "<|im_end|>"), max_out_len=256,
                    metric="bbh"),
    "humaneval_gen": Task("humaneval_gen", "gen", _humaneval_text, _humaneval_target,
                          stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_out_len=512, metric="humaneval",
                          needs_execution=True),
}


# -- user-defined tasks --------------------------------------------------------------------------

class _Template:
    """`str.format` over a row's fields, with dotted access (`{choices[text][0]}` or `{a.b}`)."""

    def __init__(self, template: str, where: str) -> None:
        self.template = template
        self.where = where

    def __call__(self, row: Row) -> str:
        try:
            return self.template.format_map(_Dotted(row))
        except (KeyError, IndexError, AttributeError) as exc:
            raise PlanError(f"{self.where}: template {self.template!r} names a missing field: {exc}") from None

    def __repr__(self) -> str:
        return f"template:{self.template!r}"


class _Dotted(dict):
    def __init__(self, row: Row) -> None:
        super().__init__(row)

    def __missing__(self, key: str):
        if "." in key:
            value = self
            for part in key.split("."):
                value = value[part]
            return value
        raise KeyError(key)


def _user_choices(spec: DatasetSpec) -> Callable[[Row], list[str]] | None:
    if spec.choices is None:
        return None
    if isinstance(spec.choices, str):
        field_name = spec.choices

        def from_field(row: Row) -> list[str]:
            value = _Dotted(row)[field_name]
            return [str(v) for v in value]

        from_field.__qualname__ = f"choices_from_field:{field_name}"
        return from_field
    templates = [_Template(t, f"dataset {spec.abbr}") for t in spec.choices]

    def from_templates(row: Row) -> list[str]:
        return [t(row) for t in templates]

    from_templates.__qualname__ = f"choices_from_templates:{list(spec.choices)!r}"
    return from_templates


def _user_target(spec: DatasetSpec, choices) -> Callable[[Row], int | str]:
    label = spec.label

    def target(row: Row) -> int | str:
        gold = _Dotted(row)[label]
        if spec.mode == "gen":
            return str(gold)
        opts = choices(row)
        if isinstance(gold, bool) or not isinstance(gold, (int, str)):
            raise PlanError(f"dataset {spec.abbr}: label {gold!r} is neither an index, a letter nor a choice")
        if isinstance(gold, int):
            return gold
        if gold in opts:
            return opts.index(gold)
        if re.fullmatch(r"[A-Z]", gold) and ord(gold) - 65 < len(opts):
            return ord(gold) - 65
        if gold.isdigit():
            return int(gold)
        raise PlanError(f"dataset {spec.abbr}: label {gold!r} is neither an index, a letter nor a choice")

    target.__qualname__ = f"target:{label}:{spec.mode}"
    return target


def task_for(spec: DatasetSpec) -> Task:
    """The task a plan's dataset runs: a built-in one (with the plan's overrides) or its own."""
    if spec.task != "custom":
        base = BUILTIN.get(spec.task)
        if base is None:
            raise PlanError(f"no built-in task {spec.task!r}")
        overrides = {}
        if spec.fewshot:
            overrides["fewshot"] = spec.fewshot
        if spec.fewshot_split:
            overrides["fewshot_split"] = spec.fewshot_split
        if spec.max_out_len:
            overrides["max_out_len"] = spec.max_out_len
        if spec.stop:
            overrides["stop"] = tuple(spec.stop)
        return _replace(base, **overrides)
    choices = _user_choices(spec)
    metric = spec.metric or ("acc" if spec.mode == "ll" else "exact_match")
    if metric not in ("acc", "exact_match", "gsm8k", "bbh"):
        raise PlanError(f"dataset {spec.abbr}: unknown metric {metric!r} (acc, exact_match, gsm8k, bbh)")
    target = _user_target(spec, choices)
    return Task(
        name=spec.abbr, mode=spec.mode, text=_Template(spec.template, f"dataset {spec.abbr}"), target=target,
        choices=choices, target_text=(lambda row: str(_Dotted(row)[spec.label])) if spec.fewshot else None,
        target_delimiter=spec.target_delimiter, fewshot=spec.fewshot, fewshot_split=spec.fewshot_split,
        fewshot_delimiter=spec.fewshot_delimiter, stop=tuple(spec.stop), max_out_len=spec.max_out_len,
        metric=metric, extra=(spec.template, repr(spec.choices), spec.label),
    )


def _replace(task: Task, **kw) -> Task:
    from dataclasses import replace

    return replace(task, **kw) if kw else task


def build_context(task: Task, row: Row, shots: list[Row]) -> str:
    """lm-eval's fewshot_context: description + labelled examples + the question."""
    parts = []
    for ex in shots:
        answer = task.target_text(ex) if task.target_text else _gold_text(task, ex)
        parts.append(task.text(ex) + task.target_delimiter + answer)
    parts.append(task.text(row))
    prefix = task.description(row) if task.description else ""
    return prefix + task.fewshot_delimiter.join(parts)


def _gold_text(task: Task, row: Row) -> str:
    gold = task.target(row)
    if task.mode == "ll" and task.choices is not None and isinstance(gold, int):
        return task.choices(row)[gold]
    return str(gold)


def fewshot_rows(task: Task, pool: list[Row], row: Row, index: int = 0) -> list[Row]:
    """The few-shot examples of the row at position `index` of the evaluated split, as lm-eval
    picks them: `first_n` takes the first rows of the pool (for MMLU, of the same subject),
    skipping the row itself; `random` replays lm-eval's sampler (one Random(seed) whose draws carry
    over from document to document, so document i gets the (i+1)-th draw)."""
    if not task.fewshot:
        return []
    if task.sampler == "random":
        return [pool[j] for j in random_shots(len(pool), task.fewshot, index + 1, task.fewshot_seed)[index]]
    if task.group is not None:
        pool = [r for r in pool if task.group(r) == task.group(row)]
    return [r for r in pool if r != row][: task.fewshot]


@functools.lru_cache(maxsize=8)
def random_shots(pool_size: int, k: int, n_docs: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """Indices drawn by `random.Random(seed).sample(pool, k)` for documents 0..n_docs-1 in turn."""
    rnd = random.Random(seed)
    population = range(pool_size)
    return tuple(tuple(rnd.sample(population, k)) for _ in range(n_docs))
