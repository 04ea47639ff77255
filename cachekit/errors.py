"""The exit codes of both command-line tools, the root of both error trees, and cachekit's errors.

Every exit code either tool returns is defined here, once (cachekit is the lowest layer; evalcore
and the CLI read these). Every error raised on purpose derives from `ToolError`: a one-line
message, a `hint` that says what to do next and a stable `exit_code`; the CLI (cli/common.py)
prints the first two and exits with the third. cachekit's classes derive from `CachekitError`
(below), evalcore's from `EvalcoreError` (evalcore/errors.py). docs/cachekit.md and
docs/evalcore.md list every code with its classes; tests/test_error_table.py checks the lists
against the classes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1        # evalcore: some partitions failed (or an error with no more specific code)
EXIT_USAGE = 2         # a bad argument, option, plan file or setting
EXIT_VERIFY = 3        # verification failed: a bundle, ledger, store index, or a changed artefact on resume
EXIT_MISSING = 4       # a missing artefact (unknown repo, revision or file; not in the local cache)
EXIT_OFFLINE = EXIT_MISSING  # evalcore: the network was refused, or something is missing offline
EXIT_IO = 5            # cachekit: a write failed (disk full, permission)
EXIT_BUSY = 5          # evalcore: the run is being run by another driver
EXIT_NETWORK = 6       # cachekit: the hub could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT)


class ToolError(Exception):
    """Root of every error either tool raises on purpose. `hint` tells the user what to do next."""

    exit_code = EXIT_FAILED
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message


class CachekitError(ToolError):
    """Root of every error cachekit raises on purpose."""


class UsageError(CachekitError, ValueError):
    """Arguments that cannot work (bad repo id, bad option combination)."""

    exit_code = EXIT_USAGE


class BundleError(CachekitError, ValueError):
    """A bundle that is unsafe or unreadable: bad manifest, hostile archive member."""

    exit_code = EXIT_VERIFY
    default_hint = "the bundle is damaged or was not written by cachekit; prefetch it again"


class VerificationError(CachekitError):
    """One or more files of a bundle do not match the manifest. `problems` lists each one."""

    exit_code = EXIT_VERIFY
    default_hint = "copy the bundle again from the online host, or rerun `cachekit prefetch` there"

    def __init__(self, problems: list, *, hint: str | None = None) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "no details"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"bundle verification failed: {first}{more}", hint=hint)


class ConflictError(CachekitError):
    """The cache already holds different content at a path an import would write."""

    exit_code = EXIT_VERIFY
    default_hint = "remove the conflicting repo from the cache (or use another HF_HOME), then import again"


class NotFoundError(CachekitError, FileNotFoundError):
    """An unknown repo, revision or file (on the hub, in a local folder or in the store)."""

    exit_code = EXIT_MISSING
    default_hint = "check the repo id and revision; `cachekit ls` lists what is installed"


class AccessError(CachekitError, PermissionError):
    """A gated or private repo and no (or a wrong) token."""

    exit_code = EXIT_MISSING
    default_hint = "accept the repo's terms on the hub and set HF_TOKEN to a token that may read it"


class WheelError(CachekitError):
    """`prefetch --wheels`: pip is missing, or a wheel does not exist for the target platform/Python."""

    exit_code = EXIT_MISSING
    default_hint = "check --platform and --python-version, and that pip can reach the package index"


class WriteError(CachekitError, OSError):
    """Writing failed (disk full, permission denied). Nothing half-written is left behind."""

    exit_code = EXIT_IO
    default_hint = "free some disk space or fix permissions, then run the same command again"


class NetworkError(CachekitError, ConnectionError):
    """The hub could not be reached or the transfer broke off."""

    exit_code = EXIT_NETWORK
    default_hint = "check HF_ENDPOINT and the connection; a rerun continues where this one stopped"
