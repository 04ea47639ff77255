# Over 400 lines on purpose: the click commands of one tool, thin wrappers over evalcore (each
# command's options, help text and example); the work is in the evalcore packages.
"""`evalcore`: offline batch evaluation of language models."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cachekit.errors import EXIT_INTERRUPTED
from evalcore.runners.registry import RUNNERS, names

from .common import CliState, debug_option, handle_errors, pass_state, work_dir_option

NARGS = {"--model-kwargs", "--tokenizer-kwargs", "--datasets", "--tasks"}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@debug_option
@click.version_option(package_name="cachekit-evalcore")
def evalcore() -> None:
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
        click.option("--tasks", multiple=True, metavar="NAME...", help="lm-eval task, group or tag names from --include-path task files. Replaces the plan's (with --datasets: both)."),
        click.option("--include-path", "include_path", multiple=True, metavar="DIR", help="A folder of lm-eval 0.4 task YAML files (repeatable)."),
        click.option("--max-num-workers", type=int, help="Worker processes (model instances) at once."),
        click.option("--max-workers-per-gpu", "--max-num-workers-per-gpu", "max_workers_per_gpu", type=int, help="Workers sharing one GPU."),
        click.option("--max-partition-size", type=int, help="Largest partition, in cost units (samples x choices; x20 for generation)."),
        work_dir_option,
        click.option("--limit", type=int, help="Evaluate only the first N samples of each dataset."),
        click.option("--offline/--no-offline", default=None, help="Refuse the network (default: on)."),
        click.option("--runner", type=click.Choice(names()), help="Where workers run: "
                     + "; ".join(f"{s.name}: {s.summary}" for s in RUNNERS.values()) + "."),
        click.option("--lease-seconds", type=float, help="A partition whose worker stops heartbeating for this long is taken over."),
        click.option("--unsafe-allow-weak-sandbox", is_flag=True, default=None,
                     help="UNSAFE: where no OS sandbox (bubblewrap) works, run generated code under a Python guard that code can escape."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@evalcore.command(name="eval")
@click.argument("plan_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_run_flags
@handle_errors
@pass_state
def eval_(cli: CliState, plan_file, **flags) -> None:
    """Run an evaluation offline: preflight, partitions, workers, scores, summary.

    Flags override the plan file, which overrides defaults. The run folder and id are printed
    first; `evalcore status`, `resume` and `report` take either.

    \b
    Example:
      evalcore eval plan.toml --limit 100 --max-num-workers 2
      evalcore eval --hf-path ./my-checkpoint --model-kwargs torch_dtype=float32 \\
                    --datasets arc_easy_ppl siqa_gen --batch-size 8 --no-batch-padding
      evalcore eval --hf-path ./my-checkpoint --include-path my_tasks/ --tasks hellaswag winogrande
    """
    from evalcore.engine.runlock import DriverLock
    from evalcore.runners import driver

    plan = _plan_from(plan_file, flags, work_dir=cli.work_dir)
    ctx = driver.start(plan, sys.argv, log=lambda s: click.echo(s, err=True))
    click.echo(f"run {ctx.run_id}: {ctx.run_dir}")
    with DriverLock(ctx.run_dir):
        _execute_and_report(ctx)


def _plan_from(plan_file, flags, work_dir: str | None = None):
    from evalcore.plan.spec import Plan, load_plan, parse_kwargs, parse_plan, with_overrides

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
    run = {k: flags[k] for k in ("max_num_workers", "max_workers_per_gpu", "max_partition_size",
                                 "limit", "offline", "runner", "lease_seconds", "unsafe_allow_weak_sandbox")
           if flags[k] is not None}
    if work_dir is not None:
        run["work_dir"] = work_dir
    if flags["include_path"]:
        run["include_path"] = [str(Path(p).expanduser().resolve()) for p in flags["include_path"]]
    plan = with_overrides(plan, model=model, model_overrides=overrides if (overrides and not model) else None,
                          datasets=list(flags["datasets"]) or None, run=run, tasks=list(flags["tasks"]) or None)
    if model and overrides:
        plan = with_overrides(plan, model_overrides=overrides)
    if flags["max_out_len"] is not None:
        plan = _max_out_len_on_generation_sets(plan, flags["max_out_len"])
    assert isinstance(plan, Plan)
    return plan


def _max_out_len_on_generation_sets(plan, n: int):
    """--max-out-len takes effect on every generation set, built-ins with their own length
    included (a model setting alone would lose to the benchmark's); scoring sets generate nothing."""
    from evalcore.benchmarks.registry import builtin
    from evalcore.benchmarks.taskfile import bind
    from evalcore.benchmarks.yamlfile import load_yaml
    from evalcore.plan.spec import Plan, replace

    def generates(d) -> bool:
        if d.task == "custom":
            return d.mode == "gen"
        if d.task == "lmeval":
            return (load_yaml(d.task_file, resolve=False).get("output_type") or "generate_until") == "generate_until"
        return builtin(d.task).mode == "gen"

    plan = bind(plan)  # task files: their output type decides

    return Plan(plan.models, tuple(replace(d, max_out_len=n) if generates(d) else d for d in plan.datasets), plan.run)


def _int(value: str, flag: str) -> int:
    from evalcore.errors import PlanError

    try:
        return int(value)
    except ValueError:
        raise PlanError(f"{flag} must be an integer or 'auto', got {value!r}") from None


def _execute_and_report(ctx) -> None:
    from evalcore.engine.ledger import Ledger
    from evalcore.report import tables as report
    from evalcore.runners import driver

    bar = _ProgressBar()
    try:
        outcome = driver.execute(ctx, on_progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"\ninterrupted: workers stopped at a batch boundary, their partitions handed back, the run "
                   f"marked interrupted. Continue with: {driver.resume_command(ctx.run_dir)}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    bar.close()
    with Ledger(ctx.ledger_path, create=False, run_id=ctx.run_id) as ledger:
        click.echo(_summary(ctx, ledger, "table"))
        _echo_paths(ctx, ledger, "table")
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
    """A bar on a terminal; otherwise plain lines (evalcore/engine/progress.py) on stderr."""

    def __init__(self) -> None:
        import time

        from evalcore.engine.progress import ProgressLines

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
    from evalcore.engine.security import report_notes
    from evalcore.report import tables as report

    tasks = ctx.tasks()
    rows = report.summary_rows(ledger.results(ctx.run_id), ledger.partitions(ctx.run_id),
                               {d: t.version for d, t in tasks.items()},
                               {d: {"ll": "ppl", "gen": "gen"}.get(t.mode, t.mode) for d, t in tasks.items()},
                               [m.name for m in ctx.plan.models],
                               [d.abbr for d in ctx.plan.datasets] + list(dict.fromkeys(g for d in ctx.plan.datasets for g in d.groups)))
    notes = report_notes(ctx.security)
    if notes and fmt in ("csv", "json"):  # keep machine formats parseable
        click.echo("\n".join(notes), err=True)
    return report.render(rows, fmt) + ("\n\n" + "\n".join(notes) if notes and fmt in ("table", "md") else "")


def _echo_paths(ctx, ledger, fmt: str) -> None:
    """The backend paths taken and every fallback; on stderr where stdout is csv/json."""
    from evalcore.report import tables as report

    lines = report.backend_path_lines(ledger.backend_paths(ctx.run_id))
    if lines:
        click.echo("\nbackend paths:\n" + "\n".join(lines), err=fmt in ("csv", "json"))


@evalcore.command()
@click.argument("run", required=False)
@work_dir_option
@click.option("--runner", type=click.Choice(names()), default=None,
              help="Continue with this runner (default: the run's own); recorded in run.json.")
@handle_errors
@pass_state
def resume(cli: CliState, run: str | None, runner: str | None) -> None:
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

    from evalcore.engine.ledger import Ledger
    from evalcore.engine.runlock import DriverLock
    from evalcore.runners import driver

    run_dir = driver.find_run(run, cli.runs_dir())
    with DriverLock(run_dir):  # a second driver of this run is refused (exit 5) before anything is rewritten
        ctx = driver.check_resume(run_dir, log=lambda s: click.echo(s, err=True), runner=runner)
        with Ledger(ctx.ledger_path, create=False, run_id=ctx.run_id) as ledger:
            back = driver.hand_back_dead(ledger, ctx.run_id)  # workers of a killed driver: no lease wait
            n = ledger.requeue(ctx.run_id, now=time.time())
        click.echo(f"run {ctx.run_id}: {ctx.run_dir} ({n + back} partition(s) requeued)")
        _execute_and_report(ctx)


@evalcore.command()
@click.argument("run", required=False)
@work_dir_option
@click.option("--errors", "show_errors", is_flag=True,
              help="Every failed partition with its whole error message, traceback tail and worker log.")
@handle_errors
@pass_state
def status(cli: CliState, run: str | None, show_errors: bool) -> None:
    """Progress per model and dataset, failures with their error class, the run's state, an ETA.

    RUN is a run folder, a run id or a work dir (its newest run); default: the newest run. The
    state is running, done, failed, interrupted, or "driver gone" (its process died); an ETA is
    shown only while a driver runs. Reads only: an archived read-only run folder works too.

    \b
    Example:
      evalcore status                 # the newest run under ./outputs
      evalcore status 20261128-101500-ab12 --errors
    """
    from evalcore.engine.ledger import Ledger
    from evalcore.engine.runstate import error_details, run_state, unscored
    from evalcore.report import tables as report
    from evalcore.runners import driver
    from evalcore.runners.registry import worker_log

    run_dir = driver.find_run(run, cli.runs_dir())
    run_id = _run_id(run_dir)
    with Ledger.for_reading(run_dir / "ledger.db", run_id=run_id) as ledger:
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
            click.echo("\n" + (error_details(failed, lambda w: worker_log(run_dir, w)) or "no failed partitions"))
        elif failed:
            click.echo("\nfailures:\n" + report.failure_table(failed) + f"\n(whole messages and logs: evalcore "
                       f"status {run_dir} --errors)")


def _run_id(run_dir: Path) -> str:
    import json

    return json.loads((run_dir / "run.json").read_text())["run_id"]


@evalcore.command()
@click.argument("run", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json", "html"]), default="table",
              help="csv/json: one row per figure, numbers as numbers, with n and standard error; html: a "
                   "self-contained page (charts, sample browser, provenance), needs --out.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file instead of printing it.")
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write one JSON line per sample (prompt, choices and log-likelihoods or generation, "
                   "prediction, gold, metrics).")
@work_dir_option
@handle_errors
@pass_state
def report(cli: CliState, run: str | None, fmt: str, out_file: Path | None, samples_file: Path | None) -> None:
    """The summary table (dataset, version, metric, mode, one column per model), from the newest
    results version (which one is said on stderr); md and json add the effective settings of
    each model x dataset.

    RUN is a run folder, a run id or a work dir (its newest run); default: the newest run.

    \b
    Example:
      evalcore report outputs/20261128-101500-ab12 --format md
      evalcore report 20261128-101500-ab12 --samples predictions.jsonl
      evalcore report 20261128-101500-ab12 --format html --out report.html
    """
    from evalcore.engine.ledger import Ledger
    from evalcore.engine.runctx import RunContext
    from evalcore.errors import ReportError
    from evalcore.report import data as report_data
    from evalcore.report import tables as rep
    from evalcore.runners import driver

    if fmt == "html" and out_file is None:
        raise ReportError("--format html needs --out FILE (the page is one self-contained file)")
    _check_out(out_file)
    ctx = RunContext.load(driver.find_run(run, cli.runs_dir()))
    with Ledger.for_reading(ctx.ledger_path, run_id=ctx.run_id) as ledger:
        data = report_data.gather(ctx, ledger)
        if fmt == "html":
            from evalcore.report import html as report_html

            text = report_html.render_report(ctx, ledger, data)
        elif fmt in ("json", "csv"):
            from evalcore.engine.security import report_notes

            text = report_data.render_machine(data, fmt)
            for note in report_notes(ctx.security):  # machine formats stay parseable: notes on stderr
                click.echo(note, err=True)
        else:
            text = _summary(ctx, ledger, fmt)
        text = _with_settings(text, fmt, ledger.partitions(ctx.run_id), ctx.run_dir)
        if out_file is None:
            click.echo(text)
            if fmt != "html":
                _echo_paths(ctx, ledger, fmt)
        else:
            _write_atomically(out_file, text + "\n")
        click.echo(data["note"], err=True)
        if out_file is not None:
            click.echo(f"wrote {fmt} report to {out_file}", err=True)
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


def _write_atomically(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@evalcore.command()
@click.argument("run")
@click.option("--metric", "metric_names", multiple=True, metavar="NAME",
              help="Score with this metric instead of the task's own (repeatable): acc, exact_match, gsm8k, "
                   "bbh, bbh_fewshot, letter, humaneval, stored (the scores as the run stored them).")
@click.option("--filter", "filter_name", metavar="NAME",
              help="Answer filter for exact_match/letter: none, strip, first-line, strict-match, "
                   "flexible-extract, regex:PATTERN.")
@click.option("--dataset", "datasets", multiple=True, metavar="ABBR", help="Apply --metric/--filter only here.")
@work_dir_option
@handle_errors
@pass_state
def rescore(cli: CliState, run: str, metric_names: tuple[str, ...], filter_name: str | None,
            datasets: tuple[str, ...]) -> None:
    """Recompute every metric from the stored per-sample outputs: no model, tokenizer or GPU.

    Writes a new results version in the run's ledger (the old ones are kept); `report` shows
    the newest. Without --metric each task's own metric is used (the figures come out as the
    run's).

    \b
    Example:
      evalcore rescore outputs/20261128-101500-ab12
      evalcore rescore 20261128-101500-ab12 --metric exact_match --filter 'regex:answer is (\\w+)'
    """
    import time

    from evalcore.engine.ledger import Ledger
    from evalcore.engine.rescore import rescore_run
    from evalcore.engine.runctx import RunContext
    from evalcore.runners import driver

    ctx = RunContext.load(driver.find_run(run, cli.runs_dir()))
    with Ledger(ctx.ledger_path, create=False, run_id=ctx.run_id) as ledger:
        version, skipped = rescore_run(ctx, ledger, metric_names, filter_name, datasets, now=time.time())
        for model, dataset in skipped:
            click.echo(f"skipped {model} x {dataset}: not finished (resume the run first)", err=True)
        click.echo(f"run {ctx.run_id}: results version {version} (rescore)")
        click.echo(_summary(ctx, ledger, "table"))


@evalcore.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "json", "html"]), default="table")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the comparison to this file instead of printing it.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="A difference with a paired-test p-value at or above this is flagged as within noise.")
@work_dir_option
@handle_errors
@pass_state
def compare(cli: CliState, run_a: str, run_b: str, fmt: str, out_file: Path | None, alpha: float) -> None:
    """Compare two runs per model x dataset: both scores, the difference (B - A) and a paired
    test on the samples both scored (McNemar for 0/1 scores, else a paired bootstrap with a
    fixed seed); differences within noise are flagged.

    \b
    Example:
      evalcore compare outputs/20261128-101500-ab12 outputs/20261129-090000-cd34
      evalcore compare RUN_A RUN_B --format html --out compare.html
    """
    from evalcore.engine.ledger import Ledger
    from evalcore.engine.runctx import RunContext
    from evalcore.report import compare as cmp
    from evalcore.runners import driver

    _check_out(out_file)
    ctx_a = RunContext.load(driver.find_run(run_a, cli.runs_dir()))
    ctx_b = RunContext.load(driver.find_run(run_b, cli.runs_dir()))
    with Ledger(ctx_a.ledger_path, create=False, run_id=ctx_a.run_id) as la, \
            Ledger(ctx_b.ledger_path, create=False, run_id=ctx_b.run_id) as lb:
        doc = cmp.compare_runs(ctx_a, la, ctx_b, lb, alpha)
    text = cmp.render(doc, fmt)
    if out_file is None:
        click.echo(text)
    else:
        _write_atomically(out_file, text + "\n")
        click.echo(f"wrote {fmt} comparison to {out_file}", err=True)


@evalcore.command(name="export")
@click.argument("run")
@click.option("--db", "db_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file to write (created, or this run's rows replaced in it).")
@work_dir_option
@handle_errors
@pass_state
def export_(cli: CliState, run: str, db_file: Path) -> None:
    """Write a run's runs, settings, results (every version) and samples as plain SQLite tables,
    for sqlite3, Datasette or pandas.

    \b
    Example:
      evalcore export outputs/20261128-101500-ab12 --db results.db
      sqlite3 results.db "SELECT model, dataset, metric, value FROM results WHERE subtask = ''"
    """
    from evalcore.engine.ledger import Ledger
    from evalcore.engine.runctx import RunContext
    from evalcore.report.export_db import export_run
    from evalcore.runners import driver

    ctx = RunContext.load(driver.find_run(run, cli.runs_dir()))
    with Ledger(ctx.ledger_path, create=False, run_id=ctx.run_id) as ledger:
        counts = export_run(ctx, ledger, db_file)
    click.echo(f"run {ctx.run_id}: wrote " + ", ".join(f"{n} {t}" for t, n in counts.items()) + f" to {db_file}")


def _check_out(out_file: Path | None) -> None:
    from evalcore.errors import ReportError

    if out_file is not None and not out_file.parent.is_dir():
        raise ReportError(f"--out {out_file}: the folder {out_file.parent} does not exist", hint="create it first")


def _with_settings(text: str, fmt: str, partitions, run_dir) -> str:
    """The summary plus the effective settings of each model x dataset (json: a `settings` entry
    per row, model -> settings; md: a Settings section)."""
    import json

    from evalcore.engine.settings import settings_markdown, settings_of

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

    from evalcore.engine.gpus import discover_gpus
    from evalcore.engine.leases import GpuLeases, default_path

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
    """Print the models and datasets a plan needs (each dataset with its configs and splits) and
    the prefetch command that bundles them.

    \b
    Example:
      evalcore needs eval.toml
    """
    from cachekit.sources import local_advice
    from evalcore.plan.needs import dataset_needs, describe
    from evalcore.plan.sources import plan_local_paths, plan_sources
    from evalcore.plan.spec import load_plan

    plan = load_plan(plan_file)
    sources = plan_sources(plan)
    needs = dataset_needs(plan)  # hub datasets with the configs and splits each one reads
    described = {n.repo_id for n in needs}
    for s in sources:
        if s.repo_type != "dataset" or s.repo_id not in described:
            click.echo(f"{s.repo_type:8} {s.repo_id}@{s.revision}")
    for need in needs:
        click.echo(f"{'dataset':8} {describe(need)}")
    if sources:
        click.echo(f"\non a host with internet:\n  cachekit prefetch --plan {plan_file} --out bundle.tar")
    else:
        click.echo("nothing to fetch from the hub: every model and dataset of this plan is a local path")
    for line in local_advice(plan_local_paths(plan), "local.tar"):
        click.echo(line)


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
