"""A row turned into what is scored, and the error a bad row raises (naming the field)."""

from __future__ import annotations

from dataclasses import dataclass


class RowError(Exception):
    """A row that cannot become requests: a missing field, a gold that maps to no choice, an
    empty choice list. `field` names what failed (template, choices, gold, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Requests:
    """One row as scored. ll: `contexts` (one, or one per choice in the multiple-input form) and
    `continuations`; gen: one context; loglik/rolling: one context and one continuation."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]  # what acc_norm measures (choice texts; contexts when multiple-input)
    gold: int | str | tuple
