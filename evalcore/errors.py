"""The evalcore exception tree: every error evalcore raises on purpose, each with a stable exit
code and a hint, in this one module (the exit codes themselves are cachekit.errors', shared by
both tools). docs/evalcore.md lists every code with its classes; tests/test_error_table.py checks
the list against this module."""

from __future__ import annotations

from cachekit.errors import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OFFLINE,
    EXIT_USAGE,
    EXIT_VERIFY,
    ToolError,
)


class EvalcoreError(ToolError):
    """Root of every error evalcore raises on purpose; `hint` says what to do next.

    `rerun_can_fix` is False where a rerun of the same plan on the same files meets the error
    again (the plan, the data or the model must change): `resume` is never advised for it."""

    exit_code = EXIT_FAILED
    rerun_can_fix = True


# -- the plan and its inputs (checked before a run folder exists) ----------------------------

class PlanError(EvalcoreError, ValueError):
    """A plan file or flag that cannot work: unknown key, bad value, unknown dataset name."""

    exit_code = EXIT_USAGE
    default_hint = "see docs/plan.md for the plan file format"
    rerun_can_fix = False


class BadRow(PlanError):
    """A dataset row that cannot become requests (the dry pass names the dataset, row and field)."""

    default_hint = "fix the dataset definition (docs/plan.md) or the data; nothing was run"


class TaskFileError(PlanError):
    """An lm-eval task file that does not parse, or uses a key evalcore does not support."""

    default_hint = "fix the lm-eval task file (see docs/evalcore.md, lm-eval task files)"


class LeaseError(EvalcoreError, ValueError):
    """A GPU request that can never be met on this host (more GPUs than exist, none declared)."""

    exit_code = EXIT_USAGE
    default_hint = "lower the model's GPU count or make more GPUs visible (CUDA_VISIBLE_DEVICES)"
    rerun_can_fix = False


class MissingArtefact(EvalcoreError, FileNotFoundError):
    """A model, tokenizer or dataset of the plan is not in the local cache (offline)."""

    exit_code = EXIT_OFFLINE
    default_hint = "bundle it on a host with internet (cachekit prefetch) and import it here (cachekit import)"
    rerun_can_fix = False


class OfflineViolation(EvalcoreError, ConnectionError):
    """Something tried to reach the network while the run is offline."""

    exit_code = EXIT_OFFLINE
    default_hint = "everything must come from the local cache: prefetch the missing artefact, or pass --no-offline"
    rerun_can_fix = False


class HubUnreachable(EvalcoreError):
    """`--no-offline` and a plan that needs the hub, which cannot be reached."""

    exit_code = EXIT_OFFLINE
    default_hint = ("run offline from the local cache (drop --no-offline), or check the network, "
                    "HF_ENDPOINT and any proxy")


class StoreIndexUnreadable(EvalcoreError):
    """The cachekit store index exists but cannot be read: the run stops rather than fall back to
    the plain cache (where the bundle's recorded decisions, trust_remote_code among them, are lost)."""

    exit_code = EXIT_VERIFY


# -- code execution ---------------------------------------------------------------------------

class ExecutionNotAllowedError(EvalcoreError, PermissionError):
    """Code execution was asked for without the explicit opt-in."""

    exit_code = EXIT_USAGE
    default_hint = "running generated code must be enabled in the plan (it is off by default)"


class SandboxUnavailable(EvalcoreError, PermissionError):
    """The OS sandbox cannot run on this host, and the user did not opt in to the weak guard."""

    exit_code = EXIT_USAGE
    default_hint = ("install bubblewrap and allow user namespaces (see the message); only if this machine "
                    "is disposable: unsafe_allow_weak_sandbox = true in [run] (--unsafe-allow-weak-sandbox) "
                    "runs generated code under a Python-level guard that code can escape")


# -- models ---------------------------------------------------------------------------------

class BackendError(EvalcoreError):
    """A model or tokenizer that cannot be loaded or run: missing, incompatible, out of memory."""

    exit_code = EXIT_FAILED
    default_hint = "check the model path, revision and model/tokenizer kwargs"
    rerun_can_fix = False


class ModelNotCachedError(BackendError):
    """A hub model that is not in the local cache while offline; the hint names the prefetch."""

    exit_code = EXIT_OFFLINE


# -- runs: ledger, driver, spool, runners ------------------------------------------------------

class LedgerError(EvalcoreError):
    """A ledger or lease file that cannot be used: missing, corrupt, foreign, newer schema, or a
    run that already exists with different partitions. The file is left exactly as it was."""

    exit_code = EXIT_VERIFY
    default_hint = ("point evalcore at the run's own ledger.db, or choose a new work directory; "
                    "evalcore never modifies a file it does not recognise")


class ResumeRefused(EvalcoreError):
    """`resume` of a run whose answers would change: a model, tokenizer, prompt, data, generation
    setting or library differs from what the run recorded (the message says what)."""

    exit_code = EXIT_VERIFY
    default_hint = "start a new run for the changed plan or artefacts: evalcore eval ..."


class RunBusy(EvalcoreError):
    """Another driver holds the run (a concurrent `resume`); nothing was changed."""

    exit_code = EXIT_BUSY
    default_hint = "wait for it to finish (evalcore status RUN), or stop it first"


class SpoolError(EvalcoreError):
    """The spool cannot be used (bad channel name, unreadable answer)."""


class DriverGone(SpoolError):
    """No answer from the driver in time: it was killed or lost the run. The job should stop;
    the partitions it held come back once their leases expire (or on `evalcore resume`)."""

    default_hint = "resume the run: evalcore resume RUN_DIR"


class RemoteError(SpoolError):
    """The ledger call raised on the driver's side (its class and message are kept)."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(f"{error_class} on the driver: {message}")
        self.error_class = error_class


class SlurmError(EvalcoreError):
    """Slurm cannot be used from here (no sbatch, another driver on this run, ...)."""


class ReportError(EvalcoreError, ValueError):
    """A report, comparison or export that cannot be made as asked: a destination that is not
    ours to overwrite, a missing folder, a library the HTML report needs."""

    exit_code = EXIT_USAGE
    default_hint = "evalcore report/compare/export --help says what they take"


def _tree(cls: type) -> list[type]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _tree(sub)]


# Error classes (as recorded for a failed partition) that a rerun of the same plan on the same
# files meets again, so `resume` is never advised for them (it would refuse the changed files
# anyway); a new run is. TemplateError is jinja2's: a prompt or chat template that cannot render.
RERUN_CANNOT_FIX = frozenset({c.__name__ for c in _tree(EvalcoreError) if not c.rerun_can_fix} | {"TemplateError"})
