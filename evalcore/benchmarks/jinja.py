"""Templates over a row: Jinja2 with lm-evaluation-harness 0.4.13's environment (lm_eval/utils.py:
`Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)` and its
`regex_replace` filter), so a task file's template renders here exactly as in lm-eval. Plan
datasets use the same engine. A field the row lacks is a RowError naming it."""

from __future__ import annotations

import functools
import re

from .rows import RowError


def regex_replace(string, pattern, repl, count: int = 0):
    """lm-eval's `regex_replace` filter: `re.sub`."""
    return re.sub(pattern, repl, string, count=count)


@functools.lru_cache(maxsize=1)
def environment():
    from jinja2 import BaseLoader, Environment, StrictUndefined

    env = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = regex_replace
    return env


@functools.lru_cache(maxsize=512)
def compile_template(source: str):
    from jinja2 import TemplateSyntaxError

    try:
        return environment().from_string(source)
    except TemplateSyntaxError as exc:
        raise RowError("template", f"template {source!r} does not parse: {exc}") from None


def render(source: str, row: dict, what: str = "template") -> str:
    """`apply_template` of lm-eval: the template rendered with the row's fields as variables."""
    from jinja2 import TemplateError, UndefinedError

    template = compile_template(source)
    try:
        return template.render(**row)
    except UndefinedError as exc:
        raise RowError(what, f"{source!r} names a missing field: {exc}") from None
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise RowError(what, f"{source!r} fails on this row: {type(exc).__name__}: {exc}") from None
