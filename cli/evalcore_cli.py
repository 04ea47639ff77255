"""`evalcore`: offline batch evaluation. This first version reads plans; the engine adds eval,
status, resume and report."""

from __future__ import annotations

from pathlib import Path

import click

from .common import handle_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="cachekit-evalcore")
def evalcore(debug: bool) -> None:
    """Evaluate language models offline, from a plan file.

    \b
    Example:
      evalcore needs eval.toml      # what the plan needs, as a cachekit prefetch command
    """


@evalcore.command()
@click.argument("plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@handle_errors
def needs(plan_file: Path) -> None:
    """Print the models and datasets a plan needs and the prefetch command that bundles them.

    \b
    Example:
      evalcore needs eval.toml
    """
    from evalcore.plan import load_plan, plan_sources

    sources = plan_sources(load_plan(plan_file))
    for s in sources:
        click.echo(f"{s.repo_type:8} {s.repo_id}@{s.revision}")
    click.echo(f"\non a host with internet:\n  cachekit prefetch --plan {plan_file} --out bundle.tar")


def main() -> None:
    evalcore(prog_name="evalcore")


if __name__ == "__main__":
    main()
