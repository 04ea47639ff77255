"""One benchmark definition: where its data is on the hub, how a row becomes requests (prompt,
choices, gold, few-shot), how it is generated and scored, and which groups it belongs to.
Pure data and callables over rows; no I/O."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

Row = dict

# How a row is scored (lm-eval's output types): "ll" = multiple_choice, "gen" = generate_until,
# "loglik" = loglikelihood (one continuation), "rolling" = loglikelihood_rolling (whole text).
MODES = ("ll", "gen", "loglik", "rolling")


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class HubRef:
    """The hub dataset a benchmark reads: repo, config, evaluated split, few-shot split.
    `configs` lists every config of a multi-config repo the benchmark spans (BBH: 27 tasks);
    their rows are read one config after the other, each row tagged with its config."""

    repo_id: str
    config: str | None
    split: str
    fewshot_split: str | None = None
    configs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    name: str
    mode: str  # one of MODES
    text: Callable[[Row], str | int]  # the question; an int = the gold index (multiple-input form)
    target: Callable[[Row], int | str | list]  # ll: gold choice index (or text); gen: gold text
    choices: Callable[[Row], list[str]] | None = None  # ll: choices; multiple-input: the contexts
    target_text: Callable[[Row], str] | None = None  # few-shot examples: the answer as written
    description: Callable[[Row], str] | None = None
    target_delimiter: str = " "
    fewshot: int = 0
    fewshot_split: str | None = None
    fewshot_delimiter: str = "\n\n"
    sampler: str = "first_n"  # "first_n", or "random" (lm-eval's default: Random(1234), draws carried over)
    fewshot_seed: int = 1234
    fewshot_exclude_self: bool = False  # lm-eval: the few-shot pool is the evaluated split itself
    fewshot_samples: tuple = ()  # fixed few-shot rows (lm-eval fewshot_config.samples)
    stop: tuple[str, ...] = ()
    max_out_len: int | None = None
    metric: str = "acc"  # a scorer of evalcore.benchmarks.scores (acc | gsm8k | bbh | letter | humaneval | exact_match | lmeval)
    group: Callable[[Row], str] | None = None  # per-group averages (MMLU subjects, BBH tasks)
    needs_execution: bool = False
    multiple_input: bool = False  # lm-eval's multiple-input form: one context per choice, one continuation
    hub: HubRef | None = None
    groups: tuple[str, ...] = ()  # lm-eval groups/tags this task belongs to
    scoring: Mapping = field(default_factory=_empty)  # metric="lmeval": metric_list, filter_list
    source: str = "builtin"  # "builtin", "plan", or the task file it was read from
    recorded: Mapping = field(default_factory=_empty)  # accepted keys that do not change a score
    process_docs: Callable[[list[Row]], list[Row]] | None = None  # lm-eval process_docs, over a split's rows
    extra: tuple = field(default=())

    @property
    def version(self) -> str:
        """A short hash of everything that shapes the prompts and scores of this task."""
        parts = [self.name, self.mode, self.target_delimiter, str(self.fewshot), str(self.fewshot_split),
                 self.fewshot_delimiter, self.sampler, str(self.fewshot_seed), repr(self.stop), str(self.max_out_len), self.metric, repr(self.extra)]
        if self.multiple_input or self.fewshot_exclude_self or self.fewshot_samples or self.scoring:
            parts += [str(self.multiple_input), str(self.fewshot_exclude_self), repr(self.fewshot_samples),
                      repr(dict(self.scoring))]
        fns = (self.text, self.target, self.choices, self.target_text, self.description, self.group)
        for fn in fns + ((self.process_docs,) if self.process_docs else ()):
            parts.append(_source(fn))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def _source(fn) -> str:
    if fn is None:
        return "-"
    fingerprint = getattr(fn, "fingerprint", None)
    if fingerprint is not None:
        return fingerprint
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return repr(fn)


SUBSET_FIELD = "__subset__"  # the config a row of a multi-config benchmark came from

# Keys of a plan's dataset that would reshape a built-in's (or a task file's) prompt or scoring:
# refused there (a plan's own dataset takes them).
FIXED_ON_BUILTIN = ("mode", "template", "choices", "label", "label_map", "gold", "contexts", "continuation",
                     "metric", "description", "target_delimiter", "fewshot_delimiter")
