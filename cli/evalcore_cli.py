"""`evalcore`: offline batch evaluation of language models."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import handle_errors

NARGS = {"--model-kwargs", "--tokenizer-kwargs", "--datasets"}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="cachekit-evalcore")
def evalcore(debug: bool) -> None:
    """Evaluate language models offline: models x datasets, partitioned, resumable.

    \b
    Example:
      evalcore eval plan.toml                       # run a plan file
      evalcore eval --hf-path HuggingFaceTB/SmolLM2-135M-Instruct --datasets arc_easy_ppl --limit 100
      evalcore status                               # progress of the newest run
      evalcore resume outputs/20261128-101500-ab12  # rerun only what failed or never finished
      evalcore report outputs/20261128-101500-ab12 --format md --samples preds.jsonl

    Exit codes: 0 all done, 1 some partitions failed (the resume command is printed when a rerun
    can fix them), 2 usage, 3 verification failed (corrupt ledger or store index, changed artefacts
    on resume), 4 offline violation or missing artefact, 5 the run is being run by another
    driver, 130 interrupted (resume continues).
    """


def _run_flags(fn):
    opts = [
        click.option("--hf-path", help="Model: hub repo id (from the local cache) or local folder. Replaces the plan's models."),
        click.option("--tokenizer-path", help="Tokenizer repo id or folder (default: the model's)."),
        click.option("--model-kwargs", multiple=True, metavar="K=V...", help="from_pretrained kwargs, e.g. torch_dtype=float32 device_map='auto' trust_remote_code=True."),
        click.option("--tokenizer-kwargs", multiple=True, metavar="K=V...", help="Tokenizer kwargs, e.g. padding_side='left' truncation='left' use_fast=False."),
        click.option("--max-out-len", type=int, help="Most tokens generated per answer, for every generation dataset (default: each dataset's own, else 256)."),
        click.option("--max-seq-len", type=int, help="Longest input (prompts are cut from the left)."),
        click.option("--batch-size", help="Samples per batch, or 'auto' (GPU: halve on out-of-memory)."),
        click.option("--hf-num-gpus", "--num-gpus", "num_gpus", type=int, help="GPUs each model instance needs."),
        click.option("--batch-padding/--no-batch-padding", default=None, help="--no-batch-padding: run samples one at a time (no padding effects)."),
        click.option("--chat-template/--no-chat-template", default=None, help="Wrap generation prompts in the tokenizer's chat template (default: off)."),
        click.option("--datasets", multiple=True, metavar="NAME...", help="Built-in datasets (arc_easy_ppl, gsm8k_gen, ...). Replaces the plan's."),
        click.option("--max-num-workers", type=int, help="Worker processes (model instances) at once."),
        click.option("--max-workers-per-gpu", "--max-num-workers-per-gpu", "max_workers_per_gpu", type=int, help="Workers sharing one GPU."),
        click.option("--max-partition-size", type=int, help="Largest partition, in cost units (samples x choices; x20 for generation)."),
        click.option("--work-dir", help="Where run folders go (default: outputs)."),
        click.option("--limit", type=int, help="Evaluate only the first N samples of each dataset."),
        click.option("--offline/--no-offline", default=None, help="Refuse the network (default: on)."),
        click.option("--runner", type=click.Choice(["local", "slurm"]), help="Where workers run."),
        click.option("--lease-seconds", type=float, help="A partition whose worker stops heartbeating for this long is taken over."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@evalcore.command(name="eval")
@click.argument("plan_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_flags
@handle_errors
def eval_(plan_file, **flags) -> None:
    """Run an evaluation offline: preflight, partitions, workers, scores, summary.

    Flags override the plan file, which overrides defaults. The run folder and id are printed
    first; `evalcore status`, `resume` and `report` take either.

    \b
    Example:
      evalcore eval plan.toml --limit 100 --max-num-workers 2
      evalcore eval --hf-path ./my-checkpoint --model-kwargs torch_dtype=float32 \\
                    --datasets arc_easy_ppl siqa_gen --batch-size 8 --no-batch-padding
    """
    from evalcore import driver
    from evalcore.runlock import DriverLock

    plan = _plan_from(plan_file, flags)
    ctx = driver.start(plan, sys.argv, log=lambda s: click.echo(s, err=True))
    click.echo(f"run {ctx.run_id}: {ctx.run_dir}")
    with DriverLock(ctx.run_dir):
        _execute_and_report(ctx)


def _plan_from(plan_file, flags):
    from evalcore.plan import Plan, load_plan, parse_kwargs, parse_plan, with_overrides

    plan = load_plan(plan_file) if plan_file else parse_plan({})
    model = None
    overrides = {}
    if flags["hf_path"]:
        model = {"path": flags["hf_path"]}
        if flags["tokenizer_path"]:
            model["tokenizer_path"] = flags["tokenizer_path"]
    elif flags["tokenizer_path"]:
        overrides["tokenizer_path"] = flags["tokenizer_path"]
    if flags["model_kwargs"]:
        overrides["model_kwargs"] = parse_kwargs(flags["model_kwargs"], "--model-kwargs")
    if flags["tokenizer_kwargs"]:
        overrides["tokenizer_kwargs"] = parse_kwargs(flags["tokenizer_kwargs"], "--tokenizer-kwargs")
    for flag, key in (("max_out_len", "max_out_len"), ("max_seq_len", "max_seq_len"), ("num_gpus", "num_gpus")):
        if flags[flag] is not None:
            overrides[key] = flags[flag]
    if flags["batch_size"] is not None:
        bs = flags["batch_size"]
        overrides["batch_size"] = bs if bs == "auto" else _int(bs, "--batch-size")
    for key in ("batch_padding", "chat_template"):
        if flags[key] is not None:
            overrides[key] = flags[key]
    run = {k: flags[k] for k in ("max_num_workers", "max_workers_per_gpu", "max_partition_size", "work_dir",
                                 "limit", "offline", "runner", "lease_seconds") if flags[k] is not None}
    plan = with_overrides(plan, model=model, model_overrides=overrides if (overrides and not model) else None,
                          datasets=list(flags["datasets"]) or None, run=run)
    if model and overrides:
        plan = with_overrides(plan, model_overrides=overrides)
    assert isinstance(plan, Plan)
    return plan


def _int(value: str, flag: str) -> int:
    from evalcore.errors import PlanError

    try:
        return int(value)
    except ValueError:
        raise PlanError(f"{flag} must be an integer or 'auto', got {value!r}") from None


def _execute_and_report(ctx) -> None:
    from evalcore import driver, report
    from evalcore.ledger import Ledger

    bar = _ProgressBar()
    try:
        outcome = driver.execute(ctx, on_progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"\ninterrupted: workers stopped at a batch boundary, their partitions handed back, the run "
                   f"marked interrupted. Continue with: {driver.resume_command(ctx.run_dir)}", err=True)
        sys.exit(130)
    bar.close()
    with Ledger(ctx.ledger_path, create=False) as ledger:
        click.echo(_summary(ctx, ledger, "table"))
        if outcome.failed:
            from evalcore.errors import RERUN_CANNOT_FIX

            click.echo("\nfailed partitions:", err=True)
            click.echo(report.failure_table(ledger.partitions(ctx.run_id)), err=True)
            fixed_by_rerun = [p for p in outcome.failed if p.get("error_class") not in RERUN_CANNOT_FIX]
            final = len(outcome.failed) - len(fixed_by_rerun)
            if final:
                click.echo(f"\n{final} partition(s) failed with an error a rerun cannot fix (plan, data or model): "
                           f"fix it, then start a new run (evalcore eval ...). Details: evalcore status "
                           f"{ctx.run_dir} --errors", err=True)
            if fixed_by_rerun:
                click.echo(f"\n{len(fixed_by_rerun)} partition(s) did not finish (whole errors and worker logs: "
                           f"evalcore status {ctx.run_dir} --errors). Resume with:\n  "
                           f"{driver.resume_command(ctx.run_dir)}", err=True)
    sys.exit(outcome.exit_code)


class _ProgressBar:
    """A bar on a terminal; otherwise plain lines (evalcore/progress.py) on stderr."""

    def __init__(self) -> None:
        import time

        from evalcore.progress import ProgressLines

        self.bar = None
        self.lines = None if sys.stderr.isatty() else ProgressLines(time.time())

    def update(self, rows) -> None:
        from tqdm.auto import tqdm

        if self.lines is not None:
            import time

            line = self.lines.update(rows, time.time())
            if line:
                click.echo(line, err=True)
            return
        total = sum(r["samples_total"] for r in rows)
        done = sum(r["samples_done"] for r in rows)
        if self.bar is None:
            self.bar = tqdm(total=total, desc="samples", unit="sample", disable=None, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(ctx, ledger, fmt: str) -> str:
    from evalcore import report

    tasks = ctx.tasks()
    rows = report.summary_rows(ledger.results(ctx.run_id), ledger.partitions(ctx.run_id),
                               {d: t.version for d, t in tasks.items()},
                               {d: "ppl" if t.mode == "ll" else "gen" for d, t in tasks.items()},
                               [m.name for m in ctx.plan.models], [d.abbr for d in ctx.plan.datasets])
    return report.render(rows, fmt)


@evalcore.command()
@click.argument("run", required=False)
@click.option("--work-dir", default="outputs", help="Where run ids are looked up.")
@click.option("--runner", type=click.Choice(["local", "slurm"]), default=None,
              help="Continue with this runner (default: the run's own); recorded in run.json.")
@handle_errors
def resume(run: str | None, work_dir: str, runner: str | None) -> None:
    """Rerun only what failed or never finished, down to the sample; score what is not scored.

    RUN is a run folder, a run id or a work dir (its newest run); default: the newest run.
    Refuses (exit 3) if anything the answers depend on changed since: model commit or content,
    tokenizer, prompts, data, generation settings, library versions; it says what changed.
    Refuses (exit 5) while another driver runs the same run, before anything is rewritten.

    \b
    Example:
      evalcore resume outputs/20261128-101500-ab12
      evalcore resume                 # the newest run under ./outputs
      evalcore resume RUN --runner slurm
    """
    import time

    from evalcore import driver
    from evalcore.ledger import Ledger
    from evalcore.runlock import DriverLock

    run_dir = driver.find_run(run, work_dir)
    with DriverLock(run_dir):  # a second driver of this run is refused (exit 5) before anything is rewritten
        ctx = driver.check_resume(run_dir, log=lambda s: click.echo(s, err=True), runner=runner)
        with Ledger(ctx.ledger_path, create=False) as ledger:
            back = driver.hand_back_dead(ledger, ctx.run_id)  # workers of a killed driver: no lease wait
            n = ledger.requeue(ctx.run_id, now=time.time())
        click.echo(f"run {ctx.run_id}: {ctx.run_dir} ({n + back} partition(s) requeued)")
        _execute_and_report(ctx)


@evalcore.command()
@click.argument("run", required=False)
@click.option("--work-dir", default="outputs", help="Where run ids are looked up.")
@click.option("--errors", "show_errors", is_flag=True,
              help="Every failed partition with its whole error message, traceback tail and worker log.")
@handle_errors
def status(run: str | None, work_dir: str, show_errors: bool) -> None:
    """Progress per model and dataset, failures with their error class, the run's state, an ETA.

    RUN is a run folder, a run id or a work dir (its newest run); default: the newest run. The
    state is running, done, failed, interrupted, or "driver gone" (its process died); an ETA is
    shown only while a driver runs. Reads only: an archived read-only run folder works too.

    \b
    Example:
      evalcore status                 # the newest run under ./outputs
      evalcore status 20261128-101500-ab12 --errors
    """
    from evalcore import driver, report
    from evalcore.ledger import Ledger
    from evalcore.runstate import error_details, run_state, unscored

    run_dir = driver.find_run(run, work_dir)
    run_id = _run_id(run_dir)
    with Ledger.for_reading(run_dir / "ledger.db") as ledger:
        rows = ledger.progress(run_id)
        parts = ledger.partitions(run_id)
        state = run_state(run_dir, (ledger.run(run_id) or {}).get("status", "running"))
        click.echo(f"run {run_id}: {run_dir}  [{state}]")
        table = report.progress_table(rows)
        if state != "running":  # no driver: nothing is progressing, so no ETA
            table = table.rsplit(", ETA", 1)[0]
        click.echo(table)
        missing = unscored(parts, ledger.results(run_id))
        if missing:
            click.echo(f"every sample of {', '.join(f'{m} x {d}' for m, d in missing)} is in, but not scored: "
                       f"{driver.resume_command(run_dir)} scores it")
        if state in ("interrupted", "driver gone") and not missing:
            click.echo(f"continue with: {driver.resume_command(run_dir)}")
        failed = [p for p in parts if p["status"] == "failed"]
        if show_errors:
            click.echo("\n" + (error_details(run_dir, failed) or "no failed partitions"))
        elif failed:
            click.echo("\nfailures:\n" + report.failure_table(failed) + f"\n(whole messages and logs: evalcore "
                       f"status {run_dir} --errors)")


def _run_id(run_dir: Path) -> str:
    import json

    return json.loads((run_dir / "run.json").read_text())["run_id"]


@evalcore.command()
@click.argument("run", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table")
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write one JSON line per sample (prompt, choices and log-likelihoods or generation, "
                   "prediction, gold, metrics).")
@click.option("--work-dir", default="outputs", help="Where run ids are looked up.")
@handle_errors
def report(run: str | None, fmt: str, samples_file: Path | None, work_dir: str) -> None:
    """The summary table (dataset, version, metric, mode, one column per model); md and json add
    the effective settings of each model x dataset.

    RUN is a run folder, a run id or a work dir (its newest run); default: the newest run.

    \b
    Example:
      evalcore report outputs/20261128-101500-ab12 --format md
      evalcore report 20261128-101500-ab12 --samples predictions.jsonl
    """
    from evalcore import driver
    from evalcore import report as rep
    from evalcore.ledger import Ledger
    from evalcore.runctx import RunContext

    ctx = RunContext.load(driver.find_run(run, work_dir))
    with Ledger.for_reading(ctx.ledger_path) as ledger:
        click.echo(_with_settings(_summary(ctx, ledger, fmt), fmt, ledger.partitions(ctx.run_id), ctx.run_dir))
        if samples_file:
            owner = {p["partition_id"]: (p["model_key"], p["dataset_key"]) for p in ledger.partitions(ctx.run_id)}
            tmp = samples_file.with_name(samples_file.name + ".tmp")
            n = 0
            with open(tmp, "w", encoding="utf-8") as f:
                for line in rep.sample_lines(ledger.samples(ctx.run_id), owner):
                    f.write(line + "\n")
                    n += 1
            tmp.replace(samples_file)
            click.echo(f"wrote {n} samples to {samples_file}", err=True)


def _with_settings(text: str, fmt: str, partitions, run_dir) -> str:
    """The summary plus the effective settings of each model x dataset (json: a `settings` entry
    per row, model -> settings; md: a Settings section)."""
    import json

    from evalcore.settings import settings_markdown, settings_of

    settings = settings_of(partitions, run_dir)
    if fmt == "md":
        return text + "\n\n" + settings_markdown(settings) if settings else text
    if fmt != "json" or not text:
        return text
    doc = json.loads(text)
    by_dataset: dict[str, dict] = {}
    for (m, d), s in settings.items():
        by_dataset.setdefault(d, {})[m] = s
    if isinstance(doc, list):
        for row in doc:
            if isinstance(row, dict) and "dataset" in row:
                row["settings"] = by_dataset.get(row["dataset"], {})
    elif isinstance(doc, dict):
        doc["settings"] = [{"model": m, "dataset": d, **s} for (m, d), s in settings.items()]
    return json.dumps(doc, indent=1)


@evalcore.command()
@handle_errors
def gpus() -> None:
    """The host's GPU lease table: which run and worker holds which GPU slot.

    \b
    Example:
      evalcore gpus
      EVALCORE_FAKE_GPUS=8 evalcore gpus     # declare fake devices (testing on CPU)
    """
    import os
    import time

    from evalcore.gpus import discover_gpus
    from evalcore.leases import GpuLeases, default_path

    devices = discover_gpus(os.environ)
    path = default_path(os.environ)
    click.echo(f"devices: {', '.join(devices) or 'none'}   (lease table: {path})")
    if not path.exists():
        click.echo("no leases yet")
        return
    with GpuLeases(path, [], 1) as leases:  # no devices declared: reads the table, adds no rows
        for r in leases.table(time.time()):
            held = f"{r.get('owner') or '-'} run {r.get('run') or '-'} pid {r.get('pid') or '-'}" if r.get("owner") else "free"
            click.echo(f"gpu {r['device']} slot {r['slot']}: {held}")


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


def expand_nargs(argv: list[str]) -> list[str]:
    """OpenCompass passes several values after one flag (`--model-kwargs a=1 b=2`, `--datasets x y`);
    click takes one per flag, so repeat the flag for each value."""
    out, current = [], None
    for tok in argv:
        if tok in NARGS:
            current = tok
            continue
        if current and not tok.startswith("-"):
            out += [current, tok]
            continue
        if current and tok.startswith("-"):
            current = None
        out.append(tok)
    return out


def main() -> None:
    evalcore(args=expand_nargs(sys.argv[1:]), prog_name="evalcore")


if __name__ == "__main__":
    main()
