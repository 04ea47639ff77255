"""A plan's own datasets, without code: the same Jinja2 templates as lm-eval task files
(evalcore.benchmarks.jinja), choices as templates or a field, the gold from a field (with a
label map), a gold template or a constant, and lm-eval's multiple-input form (`contexts`, one
per choice, and a shared `continuation`). Built into the same `Task` the engine runs.

A gold is never guessed: an integer is an index; a text must be one of the choices; a digit
string or a boolean is an error unless a `label_map` or a `gold` template says how to read it."""

from __future__ import annotations

import ast

from ..errors import PlanError
from .definition import Task
from .jinja import render
from .rows import RowError


class Template:
    """A Jinja2 template over a row (a callable with a stable fingerprint for the task version)."""

    def __init__(self, source: str, what: str = "template") -> None:
        self.source, self.what = source, what
        self.fingerprint = f"jinja:{what}:{source!r}"

    def __call__(self, row: dict) -> str:
        return render(self.source, row, self.what)


class Field:
    """A row's field, dotted for nested ones (`choices.text`)."""

    def __init__(self, name: str, what: str) -> None:
        self.name, self.what = name, what
        self.fingerprint = f"field:{what}:{name}"

    def __call__(self, row: dict):
        value = row
        for part in self.name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise RowError(self.what, f"the row has no field {self.name!r}")
            value = value[part]
        return value


class _Choices:
    def __init__(self, spec, what: str) -> None:
        self.what = what
        if isinstance(spec, str):
            self.parts = None
            self.one = Template(spec, what) if "{{" in spec or "{%" in spec else Field(spec, what)
        else:
            self.parts = [Template(t, what) for t in spec]
        self.fingerprint = f"choices:{what}:{spec!r}"

    def __call__(self, row: dict) -> list[str]:
        if self.parts is not None:
            return [t(row) for t in self.parts]
        value = self.one(row)
        if isinstance(self.one, Template):  # lm-eval: a template renders a Python list literal
            try:
                value = ast.literal_eval(value)
            except (SyntaxError, ValueError):
                raise RowError(self.what, f"template renders {value!r}, not a list") from None
        if not isinstance(value, (list, tuple)):
            raise RowError(self.what, f"{value!r} is not a list")
        return [str(v) for v in value]


class _Gold:
    """The gold of a row: `gold` (a constant, or a template: digits are an index) or the `label`
    field, mapped through `label_map` when given."""

    def __init__(self, spec) -> None:
        self.label, self.label_map, self.gold = spec.label, spec.label_map, spec.gold
        self.choice_gold = spec.mode == "ll"  # generation compares texts: "42" is a fine gold there
        self.fingerprint = f"gold:{spec.label!r}:{dict(spec.label_map or {})!r}:{spec.gold!r}"
        self.template = Template(spec.gold, "gold") if isinstance(spec.gold, str) else None
        self.field = Field(spec.label, "label") if spec.label else None

    def __call__(self, row: dict):
        if self.template is not None:
            text = self.template(row)
            return int(text) if text.strip().isdigit() else text
        if self.gold is not None:
            return self.gold
        raw = self.field(row)
        if self.label_map is not None:
            for key in (raw if isinstance(raw, str) else None, str(raw), _json(raw)):
                if key is not None and key in self.label_map:
                    return self.label_map[key]
            raise RowError("label", f"label {raw!r} is not in label_map ({', '.join(map(repr, self.label_map))})")
        if not self.choice_gold:
            return raw
        if isinstance(raw, bool):
            raise RowError("label", f"label {raw!r} is a boolean: add a label_map (e.g. {{ false = 0, true = 1 }})")
        if isinstance(raw, str) and raw.strip().isdigit():
            raise RowError("label", f"label {raw!r} is a digit string; say how to read it: a label_map "
                                    f"(e.g. {{ \"1\" = 0, \"2\" = 1 }}) or a gold template")
        return raw


def _json(v) -> str:
    import json

    return json.dumps(v)


def plan_task(spec) -> Task:
    """The Task of a plan's own dataset (spec.task == "custom")."""
    where = f"dataset {spec.abbr}"
    mode = spec.mode
    multiple = spec.contexts is not None
    if multiple:
        if mode != "ll":
            raise PlanError(f"{where}: 'contexts' (one context per choice) needs mode = \"ll\"")
        if spec.continuation is None:
            raise PlanError(f"{where}: 'contexts' needs 'continuation' (the text scored after each context)")
        if spec.choices is not None or spec.template is not None:
            raise PlanError(f"{where}: with 'contexts', leave out 'choices' and 'template' (the contexts are the choices)")
    elif spec.continuation is not None:
        raise PlanError(f"{where}: 'continuation' is only used with 'contexts'")
    if spec.label is None and spec.gold is None:
        raise PlanError(f"{where}: a user-defined dataset needs 'label' (the field with the gold) or 'gold' "
                        "(a template or a constant)")
    if spec.label is not None and spec.gold is not None:
        raise PlanError(f"{where}: give either 'label' or 'gold', not both")
    if spec.label_map is not None and spec.label is None:
        raise PlanError(f"{where}: 'label_map' maps the values of 'label'; name the label field")
    metric = spec.metric or ("acc" if mode == "ll" else "exact_match")
    allowed = ("acc",) if mode == "ll" else ("exact_match", "gsm8k", "bbh")
    if metric not in allowed:
        raise PlanError(f"{where}: metric {metric!r} does not apply to mode {mode!r} (allowed: {', '.join(allowed)})")
    if mode == "ll" and (spec.stop is not None or spec.max_out_len is not None):
        raise PlanError(f"{where}: 'stop' and 'max_out_len' apply to generation (mode = \"gen\") only")
    gold = _Gold(spec)
    if multiple:
        text = gold  # the multiple-input form: the "question" is the gold index
        choices = _Choices(list(spec.contexts) if not isinstance(spec.contexts, str) else spec.contexts, "contexts")
        target = Template(spec.continuation, "continuation")
    else:
        text = Template(spec.template, "template")
        choices = _Choices(spec.choices, "choices") if spec.choices is not None else None
        target = gold
    if mode == "gen" and choices is not None:
        raise PlanError(f"{where}: 'choices' apply to mode = \"ll\"; a generation set compares with the gold text")
    fewshot = spec.fewshot or 0
    return Task(
        name=spec.abbr, mode=mode, text=text, target=target, choices=choices,
        description=Template(spec.description, "description") if spec.description else None,
        target_delimiter=" " if spec.target_delimiter is None else spec.target_delimiter,
        fewshot=fewshot, fewshot_split=spec.fewshot_split,
        fewshot_delimiter="\n\n" if spec.fewshot_delimiter is None else spec.fewshot_delimiter,
        fewshot_exclude_self=bool(fewshot) and not spec.fewshot_split,
        stop=tuple(spec.stop or ()), max_out_len=spec.max_out_len, metric=metric,
        multiple_input=multiple, source="plan",
        extra=(spec.template, repr(spec.choices), spec.label, repr(spec.gold), repr(dict(spec.label_map or {})),
               repr(spec.contexts), spec.continuation, spec.description),
    )
