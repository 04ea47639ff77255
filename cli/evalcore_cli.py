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

    Exit codes: 0 all done, 1 some partitions failed (the resume command is printed), 2 usage,
    3 verification failed (corrupt ledger, changed artefacts on resume), 4 offline violation or
    missing artefact.
    """


def _run_flags(fn):
    opts = [
        click.option("--hf-path", help="Model: hub repo id (from the local cache) or local folder. Replaces the plan's models."),
        click.option("--tokenizer-path", help="Tokenizer repo id or folder (default: the model's)."),
        click.option("--model-kwargs", multiple=True, metavar="K=V...", help="from_pretrained kwargs, e.g. torch_dtype=float32 device_map='auto' trust_remote_code=True."),
        click.option("--tokenizer-kwargs", multiple=True, metavar="K=V...", help="Tokenizer kwargs, e.g. padding_side='left' truncation='left' use_fast=False."),
        click.option("--max-out-len", type=int, help="Most tokens generated per answer."),
        click.option("--max-seq-len", type=int, help="Longest input (prompts are cut from the left)."),
        click.option("--batch-size", help="Samples per batch, or 'auto' (GPU: halve on out-of-memory)."),
        click.option("--hf-num-gpus", "--num-gpus", "num_gpus", type=int, help="GPUs each model instance needs."),
        click.option("--no-batch-padding", is_flag=True, default=None, help="Run samples one at a time (no padding effects)."),
        click.option("--chat-template", is_flag=True, default=None, help="Wrap generation prompts in the tokenizer's chat template."),
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

    plan = _plan_from(plan_file, flags)
    ctx = driver.start(plan, sys.argv, log=lambda s: click.echo(s, err=True))
    click.echo(f"run {ctx.run_id}: {ctx.run_dir}")
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
        if overrides["model_kwargs"].get("trust_remote_code") is True:
            overrides["trust_remote_code"] = True
    if flags["tokenizer_kwargs"]:
        overrides["tokenizer_kwargs"] = parse_kwargs(flags["tokenizer_kwargs"], "--tokenizer-kwargs")
    for flag, key in (("max_out_len", "max_out_len"), ("max_seq_len", "max_seq_len"), ("num_gpus", "num_gpus")):
        if flags[flag] is not None:
            overrides[key] = flags[flag]
    if flags["batch_size"] is not None:
        bs = flags["batch_size"]
        overrides["batch_size"] = bs if bs == "auto" else _int(bs, "--batch-size")
    if flags["no_batch_padding"]:
        overrides["batch_padding"] = False
    if flags["chat_template"]:
        overrides["chat_template"] = True
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
        click.echo(f"\ninterrupted; workers stopped. Continue with: {driver.resume_command(ctx.run_dir)}", err=True)
        sys.exit(130)
    bar.close()
    with Ledger(ctx.ledger_path, create=False) as ledger:
        click.echo(_summary(ctx, ledger, "table"))
        if outcome.failed:
            click.echo("\nfailed partitions:", err=True)
            click.echo(report.failure_table(ledger.partitions(ctx.run_id)), err=True)
            click.echo(f"\n{len(outcome.failed)} partition(s) did not finish. Resume with:\n  "
                       f"{driver.resume_command(ctx.run_dir)}", err=True)
    sys.exit(outcome.exit_code)


class _ProgressBar:
    def __init__(self) -> None:
        self.bar = None

    def update(self, rows) -> None:
        from tqdm.auto import tqdm

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
@click.argument("run", type=str)
@click.option("--work-dir", default="outputs", help="Where run ids are looked up.")
@handle_errors
def resume(run: str, work_dir: str) -> None:
    """Rerun only what failed or never finished, down to the sample.

    Refuses (exit 3) if anything the answers depend on changed since: model commit or content,
    tokenizer, prompts, data, generation settings; it says what changed.

    \b
    Example:
      evalcore resume outputs/20261128-101500-ab12
    """
    import time

    from evalcore import driver
    from evalcore.ledger import Ledger

    run_dir = driver.find_run(run, work_dir)
    ctx = driver.check_resume(run_dir, log=lambda s: click.echo(s, err=True))
    with Ledger(ctx.ledger_path, create=False) as ledger:
        n = ledger.requeue(ctx.run_id, now=time.time())
    click.echo(f"run {ctx.run_id}: {ctx.run_dir} ({n} partition(s) requeued)")
    _execute_and_report(ctx)


@evalcore.command()
@click.argument("run", required=False)
@click.option("--work-dir", default="outputs", help="Where run ids are looked up.")
@handle_errors
def status(run: str | None, work_dir: str) -> None:
    """Progress per model and dataset, failures with their error class, and an ETA.

    \b
    Example:
      evalcore status                 # the newest run under ./outputs
      evalcore status 20261128-101500-ab12
    """
    from evalcore import driver, report
    from evalcore.ledger import Ledger

    run_dir = driver.find_run(run, work_dir)
    run_id = _run_id(run_dir)
    with Ledger(run_dir / "ledger.db", create=False) as ledger:
        rows = ledger.progress(run_id)
        click.echo(f"run {run_id}: {run_dir}")
        click.echo(report.progress_table(rows))
        fails = report.failure_table([p for p in ledger.partitions(run_id) if p["status"] == "failed"])
        if fails:
            click.echo("\nfailures:\n" + fails)


def _run_id(run_dir: Path) -> str:
    import json

    return json.loads((run_dir / "run.json").read_text())["run_id"]


@evalcore.command()
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table")
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write one JSON line per sample (prompt, choices and log-likelihoods or generation, "
                   "prediction, gold, metrics).")
@click.option("--work-dir", default="outputs", help="Where run ids are looked up.")
@handle_errors
def report(run: str, fmt: str, samples_file: Path | None, work_dir: str) -> None:
    """The summary table (dataset, version, metric, mode, one column per model).

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
    with Ledger(ctx.ledger_path, create=False) as ledger:
        click.echo(_summary(ctx, ledger, fmt))
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
    with GpuLeases(path, devices, 1) as leases:
        for r in leases.table(time.time()):
            held = f"{r.get('owner') or '-'} run {r.get('run_id') or '-'} pid {r.get('pid') or '-'}" if r.get("owner") else "free"
            click.echo(f"gpu {r['device']} slot {r['slot']}: {held}")


@evalcore.command()
@click.argument("plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@handle_errors
def needs(plan_file: Path) -> None:
    """Print the models and datasets a plan needs (each dataset with its configs and splits) and
    the prefetch command that bundles them.

    \b
    Example:
      evalcore needs eval.toml
    """
    from evalcore.benchmarks.needs import dataset_needs, describe
    from evalcore.plan import load_plan, plan_sources

    plan = load_plan(plan_file)
    needs = dataset_needs(plan)  # hub datasets with the configs and splits each one reads
    described = {n.repo_id for n in needs}
    for s in plan_sources(plan):
        if s.repo_type != "dataset" or s.repo_id not in described:
            click.echo(f"{s.repo_type:8} {s.repo_id}@{s.revision}")
    for need in needs:
        click.echo(f"{'dataset':8} {describe(need)}")
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
