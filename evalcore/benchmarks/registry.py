"""Looking benchmarks up by name: built-ins, and the names a user gave that are not known
(all of them at once, each with its closest built-in name)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import PlanError
from .builtin import ALIASES, BUILTIN
from .definition import Task


def canonical(name: str) -> str:
    """A built-in's own name for a name or an lm-eval alias (`hellaswag` -> `hellaswag_ppl`)."""
    return ALIASES.get(name, name)


def builtin(name: str) -> Task:
    try:
        return BUILTIN[canonical(name)]
    except KeyError:
        raise PlanError(unknown_message([name])) from None


def closest(name: str) -> str | None:
    hits = difflib.get_close_matches(name, list(BUILTIN), n=1, cutoff=0.0)
    return hits[0] if hits else None


def unknown_message(names: Iterable[str]) -> str:
    parts = []
    for n in names:
        near = closest(n)
        parts.append(f"{n!r} (closest built-in: {near})" if near else repr(n))
    return f"unknown dataset name(s): {', '.join(parts)}"


def check_names(names: Iterable[str]) -> None:
    """Raise one PlanError naming every unknown built-in name, each with its closest match."""
    unknown = [n for n in dict.fromkeys(names) if canonical(n) not in BUILTIN]
    if unknown:
        raise PlanError(unknown_message(unknown),
                        hint=f"built-in names: {', '.join(sorted(BUILTIN))}; or give path (your own data), "
                             "or task = NAME with an lm-eval task file in include_path")
