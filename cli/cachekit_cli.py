"""`cachekit`: build portable, verified bundles online; verify and install them offline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cachekit.errors import EXIT_VERIFY

from .common import byte_bar, debug_option, die, handle_errors, human_size


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@debug_option
@click.version_option(package_name="cachekit-evalcore")
def cachekit() -> None:
    """Portable, checksummed bundles of Hugging Face models, datasets and metrics.

    \b
    Online host:   cachekit prefetch --model HuggingFaceTB/SmolLM2-135M-Instruct \\
                                     --dataset allenai/ai2_arc --out eval-bundle.tar
    Offline host:  cachekit verify eval-bundle.tar && cachekit import eval-bundle.tar

    Exit codes: 0 ok, 2 usage, 3 verification failed or conflict, 4 unknown or gated repo,
    revision or file, 5 write failure (disk full), 6 network failure, 130 interrupted.
    """


@cachekit.command()
@click.option("--model", "models", multiple=True, metavar="ORG/NAME[@REV]", help="A model repo (repeatable).")
@click.option("--dataset", "datasets", multiple=True, metavar="ORG/NAME[@REV]",
              help="A dataset repo, converted to Parquet per config and split (repeatable).")
@click.option("--space", "spaces", multiple=True, metavar="ORG/NAME[@REV]",
              help="A space repo, e.g. an `evaluate` metric, kept as plain files (repeatable).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME|ORG/NAME[@REV]",
              help="An `evaluate` metric (repeatable): `accuracy` is the space evaluate-metric/accuracy. "
                   "After import, evaluate.load(NAME) works offline.")
@click.option("--local", "locals_", multiple=True, metavar="[KIND:]ORG/NAME=PATH",
              help="A local folder stored under the repo id you give; KIND is model (default), dataset or space.")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An evalcore plan file: fetch exactly the models, tokenizers and datasets it needs.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable; all sources).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable; all sources).")
@click.option("--trust-remote-code", is_flag=True,
              help="Record that models with custom code may run it, and bundle the repos their auto_map names.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR|FILE.tar",
              help="Bundle folder, or a .tar file. An existing bundle is extended, reusing what it holds.")
@click.option("--wheels", "with_wheels", is_flag=True,
              help="Also put the toolkit's own wheel and every dependency wheel for the target below into "
                   "wheels/ (pip download; replaces the bundle's wheel set).")
@click.option("--python-version", metavar="X.Y", help="--wheels: the offline host's Python, e.g. 3.11.")
@click.option("--platform", "platforms", multiple=True, metavar="TAG",
              help="--wheels: the offline host's wheel platform tag, e.g. manylinux_2_28_x86_64 (repeatable).")
@click.option("--torch", "torch_spec", metavar="torch==VERSION",
              help="--wheels: the torch pin (default torch==2.13.0, the Makefile's TORCH_SPEC).")
@handle_errors
def prefetch(models, datasets, spaces, metrics, locals_, plan_file, include, exclude, trust_remote_code, out,
             with_wheels, python_version, platforms, torch_spec) -> None:
    """Resolve, pin and download everything into a bundle (run on a host with internet).

    Every revision is pinned to a commit; every file is stored once with its sha256; datasets
    are converted to Parquet. A rerun after an interruption continues where it stopped.

    \b
    Example:
      cachekit prefetch --model HuggingFaceTB/SmolLM2-135M-Instruct@main \\
          --dataset allenai/ai2_arc --exclude '*.onnx' --out bundle.tar
      cachekit prefetch --plan eval.toml --out bundle/
      cachekit prefetch --metric accuracy --metric exact_match --out metrics.tar
      cachekit prefetch --local myorg/my-model=./checkpoints/step-1000 --out bundle/
      cachekit prefetch --wheels --python-version 3.11 --platform manylinux_2_28_x86_64 --out bundle/
    """
    from cachekit.errors import UsageError
    from cachekit.evaluate_modules import metric_repo
    from cachekit.prefetch import prefetch as run
    from cachekit.sources import parse_hub_spec, parse_local_spec
    from cachekit.wheels import make_target

    wheels = make_target(python_version, platforms, torch_spec) if with_wheels else None
    if not with_wheels and (python_version or platforms or torch_spec):
        raise UsageError("--python-version, --platform and --torch only apply with --wheels")
    opts = dict(include=include, exclude=exclude, trust_remote_code=trust_remote_code)
    sources = [parse_hub_spec(s, "model", **opts) for s in models]
    sources += [parse_hub_spec(s, "dataset", **opts) for s in datasets]
    sources += [parse_hub_spec(s, "space", **opts) for s in spaces]
    sources += [parse_hub_spec(metric_repo(s), "space", **opts) for s in metrics]
    sources += [parse_local_spec(s, **opts) for s in locals_]
    needs = []
    if plan_file:
        from cachekit.errors import UsageError
        from cachekit.sources import local_advice
        from evalcore.plan.needs import dataset_needs
        from evalcore.plan.sources import plan_local_paths, plan_sources
        from evalcore.plan.spec import load_plan

        plan = load_plan(plan_file)
        needs = dataset_needs(plan)
        from_plan = plan_sources(plan, include=include, exclude=exclude, trust_remote_code=trust_remote_code)
        advice = local_advice(plan_local_paths(plan), str(out))
        if not from_plan and not sources and advice:
            raise UsageError(f"nothing to prefetch: every model and dataset of {plan_file} is a local path, "
                             "which --plan does not bundle", hint=" ".join(line.strip() for line in advice[-2:]))
        for line in advice:
            click.echo(f"note: {line}", err=True)
        sources += from_plan
    m = run(sources, out, log=lambda s: click.echo(s, err=True), wheels=wheels)
    if needs:
        _check_needs(m, needs, out)
    size = sum(m.objects().values())
    click.echo(f"bundle {out}: {len(m.entries)} entries, {len(m.objects())} files, {human_size(size)}"
               + (f", {len(m.wheels)} wheels ({human_size(sum(w.size for w in m.wheels))})" if m.wheels else ""))


def _check_needs(manifest, needs, out: Path) -> None:
    """Every config and split the plan's datasets read is in the bundle (BBH: all 27 configs)."""
    from cachekit.errors import NotFoundError
    from evalcore.plan.needs import missing_in

    missing = missing_in(manifest, needs)
    if missing:
        raise NotFoundError(f"the plan needs {len(missing)} config/split(s) the fetched datasets lack: "
                            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''} (bundle {out} was "
                            "written without them)", hint="check the plan's dataset config/split, or the repo's revision")


@cachekit.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@handle_errors
def verify(bundle: Path) -> None:
    """Hash every file of a bundle against its manifest.

    Exit 0 when all is well; exit 3 listing every problem (missing, corrupt, truncated,
    unlisted or unsafe files, links, invalid manifest; the wheels of `prefetch --wheels` too).
    `cachekit import` (which does not hash the wheels: pip installs them) runs the same checks
    and refuses exactly what this refuses. Unlisted members are named up to 5 and counted up to
    1000, where reading stops.

    \b
    Example:
      cachekit verify /media/usb/eval-bundle.tar
    """
    from cachekit.bundle import open_bundle
    from cachekit.check import refuse
    from cachekit.check import verify as run

    with open_bundle(bundle) as reader:
        m = reader.manifest()
        total = sum(m.objects().values()) + sum(w.size for w in m.wheels)
    with byte_bar(total, "verify") as bar:
        m, problems = run(bundle, progress=bar.update)
    refuse(problems)
    click.echo(f"ok: {bundle}: {len(m.entries)} entries, {len(m.objects())} files, "
               f"{human_size(sum(m.objects().values()))} verified"
               + (f"; {len(m.wheels)} wheels verified" if m.wheels else ""))


@cachekit.command(name="import")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show the plan (and check the bundle) without changing anything.")
@click.option("--link", is_flag=True,
              help="Zero-copy: hard-link the objects of a folder bundle on the same filesystem instead of "
                   "copying (the cache then shares the bundle's files: keep the bundle read-only).")
@handle_errors
def import_(bundle: Path, dry_run: bool, link: bool) -> None:
    """Install a bundle into the Hugging Face cache (HF_HOME / HF_HUB_CACHE) and the dataset store.

    Models and spaces go to the standard hub cache layout, so transformers loads them by repo id
    with HF_HUB_OFFLINE=1; datasets go to the store (CACHEKIT_HOME, default $HF_HOME/cachekit),
    to the hub layout (Parquet and a README `configs:` header) and to the datasets cache
    (HF_DATASETS_CACHE), so `datasets.load_dataset(repo_id, config)` works offline too.
    Nothing changes unless every file is good: a failed import leaves the cache as it was.
    A second import of the same bundle does nothing. A bundle with the toolkit's wheels
    (`prefetch --wheels`) also gets the offline `pip install` command printed.

    \b
    Example:
      HF_HOME=/data/hf cachekit import eval-bundle.tar --dry-run
      HF_HOME=/data/hf cachekit import eval-bundle.tar
    """
    from cachekit.bundle import open_bundle
    from cachekit.install import import_bundle

    with open_bundle(bundle) as reader:
        m = reader.manifest()
        total = sum(m.objects().values())
    with byte_bar(total, "import") as bar:
        plan = import_bundle(bundle, dry_run=dry_run, link=link, show=_show_plan, progress=bar.update)
    if dry_run:
        if plan.problems():
            die(f"the import would fail: {plan.problems()[0]}", code=EXIT_VERIFY)
        click.echo("dry run: nothing changed")
    elif plan.nothing_to_do:
        click.echo("nothing to do: everything in the bundle is already installed")
    else:
        click.echo(f"imported {bundle}")
    if m.wheels:
        _show_wheels_install(bundle)


def _show_wheels_install(bundle: Path) -> None:
    from cachekit.wheels import install_command

    if bundle.is_dir():
        click.echo(f"the toolkit's wheels are in the bundle; install it offline with:\n  {install_command(str(bundle))}")
    else:
        folder = bundle.with_suffix("")
        click.echo("the toolkit's wheels are in the bundle; install it offline with:\n"
                   f"  cachekit wheels {bundle} --out {folder}/wheels\n  {install_command(str(folder))}")


@cachekit.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="A new or empty folder for the wheel files.")
@handle_errors
def wheels(bundle: Path, out: Path) -> None:
    """Copy the wheels of a bundle (`prefetch --wheels`) into a folder, each sha256 checked.

    For a .tar bundle (a folder bundle's wheels/ is already such a folder). Then install offline
    with `pip install --no-index --find-links DIR cachekit-evalcore`. Nothing is left in DIR
    when a wheel is bad.

    \b
    Example:
      cachekit wheels eval-bundle.tar --out /tmp/wheels
      pip install --no-index --find-links /tmp/wheels cachekit-evalcore
    """
    from cachekit.wheel_copy import extract_wheels
    from cachekit.wheels import PROJECT

    n = extract_wheels(bundle, out)
    click.echo(f"{n} wheels in {out}; install with: pip install --no-index --find-links {out} {PROJECT}")


def _show_plan(plan) -> None:
    from cachekit.install import CONFLICTING, CORRUPT, NEW, PRESENT

    for e in plan.entries:
        steps = [s for s in plan.steps if s.entry is e]
        counts = {k: sum(1 for s in steps if s.status == k) for k in (NEW, PRESENT, CONFLICTING, CORRUPT)}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        click.echo(f"{e.kind:8} {e.repo_id}@{e.commit[:12]} ({e.revision}): {summary or 'no files'}")
        for s in steps:
            if s.status in (CONFLICTING, CORRUPT):
                click.echo(f"  {s.status}: {s.file.path} ({s.detail})")
    for a in plan.arrow:
        click.echo(f"datasets cache {a.entry.repo_id} {a.config}: {a.status}")
    for step in plan.modules:
        if step.status == "skipped":
            click.echo(f"evaluate module {step.entry.repo_id}: skipped: evaluate is not installed here (the space is "
                       "in the hub cache; install evaluate and import again for evaluate.load to work offline)")
        else:
            click.echo(f"evaluate module {step.entry.repo_id}: {step.status}")
        if step.entry.requirements:
            click.echo(f"  the metric needs: {' '.join(step.entry.requirements)} (pip install them too)")
    for c in plan.cards:
        if c.status == CONFLICTING:
            click.echo(f"  conflicting: {c.link} (a different README.md is already in the cache)")
    for ref, old, new in plan.refs:
        click.echo(f"ref {ref.parent.parent.name}/refs/{ref.name}: {old[:12] if old else '(none)'} -> {new[:12]}")


@cachekit.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def ls(as_json: bool) -> None:
    """List what `cachekit import` installed: kind, repo id, commit, revisions, size.

    \b
    Example:
      cachekit ls
      cachekit ls --json | jq '.[].repo_id'
    """
    from dataclasses import asdict

    from cachekit.index import Index

    items = Index().items()
    if as_json:
        click.echo(json.dumps([asdict(i) for i in items], indent=1))
        return
    if not items:
        click.echo("nothing installed (cachekit import BUNDLE installs a bundle)")
        return
    click.echo(f"{'kind':8} {'repo id':40} {'commit':12} {'revisions':16} {'size':>10}")
    for i in items:
        click.echo(f"{i.kind:8} {i.repo_id:40} {i.commit[:12]} {','.join(i.revisions) or '-':16} {human_size(i.size):>10}")


@cachekit.command()
@click.argument("repo_ids", nargs=-1, required=True, metavar="[KIND:]ORG/NAME[@REV]...")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR|FILE.tar",
              help="Bundle folder or .tar to write.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Hub cache to read (default: HF_HUB_CACHE or $HF_HOME/hub).")
@handle_errors
def export(repo_ids, out: Path, cache_dir: Path | None) -> None:
    """Bundle repos that a local Hugging Face cache already holds (no network).

    The verifiable form of "copy ~/.cache/huggingface to the offline host". KIND is model
    (default), dataset or space; REV defaults to main (or the only cached commit).

    \b
    Example:
      cachekit export HuggingFaceTB/SmolLM2-135M-Instruct dataset:allenai/ai2_arc --out bundle.tar
    """
    from cachekit.export import export as run

    m = run(list(repo_ids), out, cache_dir, log=lambda s: click.echo(s, err=True))
    click.echo(f"bundle {out}: {len(m.entries)} entries, {len(m.objects())} files, "
               f"{human_size(sum(m.objects().values()))}")


def main() -> None:
    cachekit(prog_name="cachekit")


if __name__ == "__main__":
    main()
