"""What both command-line tools share: any `ToolError` becomes its message, hint and exit code."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable

import click

from cachekit.errors import EXIT_INTERRUPTED, EXIT_USAGE, ToolError


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
        ctx = click.get_current_context()
        debug = (ctx.find_root().params.get("debug") or os.environ.get("CACHEKIT_DEBUG") == "1"
                 or os.environ.get("EVALCORE_DEBUG") == "1")
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
