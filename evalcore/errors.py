"""The evalcore exception tree: one root with a hint and a stable exit code."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_OFFLINE = 4
EXIT_BUSY = 5  # the run is being run by another driver (a concurrent resume)


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


class LedgerError(EvalcoreError):
    """A ledger or lease file that cannot be used: missing, corrupt, foreign, newer schema, or a
    run that already exists with different partitions. The file is left exactly as it was."""

    exit_code = EXIT_VERIFY
    default_hint = ("point evalcore at the run's own ledger.db, or choose a new work directory; "
                    "evalcore never modifies a file it does not recognise")


class LeaseError(EvalcoreError, ValueError):
    """A GPU request that can never be met on this host (more GPUs than exist, none declared)."""

    exit_code = EXIT_USAGE
    default_hint = "lower the model's GPU count or make more GPUs visible (CUDA_VISIBLE_DEVICES)"


class MissingArtefact(EvalcoreError, FileNotFoundError):
    """A model, tokenizer or dataset of the plan is not in the local cache (offline)."""

    exit_code = EXIT_OFFLINE
    default_hint = "bundle it on a host with internet (cachekit prefetch) and import it here (cachekit import)"


class OfflineViolation(EvalcoreError, ConnectionError):
    """Something tried to reach the network while the run is offline."""

    exit_code = EXIT_OFFLINE
    default_hint = "everything must come from the local cache: prefetch the missing artefact, or pass --no-offline"


class ReportError(EvalcoreError, ValueError):
    """A report, comparison or export that cannot be made as asked: a destination that is not
    ours to overwrite, a missing folder, a library the HTML report needs."""

    exit_code = EXIT_USAGE
    default_hint = "evalcore report/compare/export --help says what they take"


# Error classes (as recorded for a failed partition) that a rerun of the same plan on the same
# files meets again: the plan, the data or the model must change, so `resume` is never advised
# for them (it would refuse the changed files anyway); a new run is.
RERUN_CANNOT_FIX = frozenset({"PlanError", "BackendError", "ModelNotCachedError", "MissingArtefact",
                              "OfflineViolation", "LeaseError", "TemplateError"})
