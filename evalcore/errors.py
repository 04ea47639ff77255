"""The evalcore exception tree: one root with a hint and a stable exit code."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_OFFLINE = 4


class EvalcoreError(Exception):
    """Root of every error evalcore raises on purpose; `hint` says what to do next."""

    exit_code = EXIT_FAILED
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message


class PlanError(EvalcoreError, ValueError):
    """A plan file or flag that cannot work: unknown key, bad value, unknown dataset name."""

    exit_code = EXIT_USAGE
    default_hint = "see docs/plan.md for the plan file format"
