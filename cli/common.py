"""What both command-line tools share: any `ToolError` becomes its message, hint and exit code."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import click

from cachekit.errors import EXIT_INTERRUPTED, EXIT_USAGE, ToolError


@dataclass
class CliState:
    """What a tool's options hand its commands, through click's context object (`ctx.obj`):
    `--debug` (given before the command) and `--work-dir` (given after it; None when not given)."""

    debug: bool = False
    work_dir: str | None = None

    def runs_dir(self) -> str:
        """Where commands look run ids up: --work-dir, else `outputs`."""
        return self.work_dir or "outputs"


pass_state = click.make_pass_decorator(CliState, ensure=True)


def _into_state(name: str):
    def store(ctx: click.Context, _param: click.Parameter, value):
        setattr(ctx.ensure_object(CliState), name, value)
        return value

    return store


debug_option = click.option("--debug", is_flag=True, expose_value=False, callback=_into_state("debug"),
                            help="Show tracebacks on errors (also CACHEKIT_DEBUG=1 / EVALCORE_DEBUG=1).")
work_dir_option = click.option(
    "--work-dir", metavar="DIR", expose_value=False, callback=_into_state("work_dir"),
    help="Where run folders are: eval writes there (default: the plan's work_dir, else outputs), the other "
         "commands look run ids up there (default: outputs).")


def die(message: str, hint: str = "", code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Run a command; a known error (any `ToolError`: cachekit's and evalcore's) becomes one line,
    its hint, and its exit code, as cachekit/errors.py and evalcore/errors.py define them.

    Tracebacks only with --debug (or CACHEKIT_DEBUG=1 / EVALCORE_DEBUG=1).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        state = click.get_current_context().find_object(CliState) or CliState()
        debug = state.debug or os.environ.get("CACHEKIT_DEBUG") == "1" or os.environ.get("EVALCORE_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except ToolError as exc:
            if debug:
                traceback.print_exc()
            details = getattr(exc, "problems", None)
            if details and len(details) > 1:
                click.echo(f"error: {len(details)} problems:", err=True)
                for p in details:
                    click.echo(f"  {p}", err=True)
                if exc.hint:
                    click.echo(f"hint: {exc.hint}", err=True)
                sys.exit(exc.exit_code)
            die(str(exc), exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            die("interrupted; nothing half-written was kept, a rerun continues", code=EXIT_INTERRUPTED)

    return wrapper


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def byte_bar(total: int, desc: str):
    """A tqdm progress bar on stderr, shown only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None, leave=False)
