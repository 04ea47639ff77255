"""Scheduling benchmark: a real `evalcore eval` (real workers, ledger and GPU leases) on 8 fake
GPUs with a synthetic backend whose load and per-sample costs come from measured SmolLM2 runs
(scaled down), for a plan of 4 models (one needing 2 GPUs) x 20 datasets. Makespan as a ratio to
the lower bound, model loads, and the same plan under OpenCompass's reload-per-task policy."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARC = ROOT / "bundles" / "demo" / "data" / "ai2_arc" / "ARC-Easy" / "validation.jsonl"
GPUS = 8


def plan_text(work: Path, load_s: float, sample_s: float, n: int, part: int, reload: bool) -> str:
    models = "".join(
        f'\n[[models]]\nabbr = "m{i}"\npath = "m{i}"\nbackend = "scripted"\nnum_gpus = {2 if i == 3 else 1}\n'
        f'backend_options = {{ load_seconds = {load_s}, sample_seconds = {sample_s} }}\n' for i in range(4))
    datasets = "".join(
        f'\n[[datasets]]\nabbr = "d{j:02d}"\npath = "{ARC}"\nmode = "ll"\ntemplate = "Q: {{question}}"\n'
        f'choices = "choices.text"\nlabel = "answerKey"\n' for j in range(20))
    return (f'[run]\nwork_dir = "{work / "outputs"}"\nmax_num_workers = {GPUS}\nmax_partition_size = {part * 4}\n'
            f'limit = {n}\nlease_seconds = 30\nreload_per_partition = {"true" if reload else "false"}\n'
            + models + datasets)


def one_run(work: Path, load_s: float, sample_s: float, n: int, part: int, reload: bool) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plan = work / "plan.toml"
    plan.write_text(plan_text(work, load_s, sample_s, n, part, reload))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), EVALCORE_STATE_DIR=str(work / "state"), HF_HOME=str(work / "hf"),
               EVALCORE_FAKE_GPUS=str(GPUS))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cli.evalcore_cli", "eval", str(plan)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    makespan = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    run_dir = Path(next(x for x in r.stdout.splitlines() if x.startswith("run ")).split(": ", 1)[1])
    con = sqlite3.connect(run_dir / "ledger.db")
    loads = con.execute("SELECT count(*) FROM loads").fetchone()[0]
    parts = con.execute("SELECT count(*), sum(n_samples * max(n_gpus, 1)) FROM partitions").fetchone()
    con.close()
    return {"makespan": makespan, "loads": loads, "partitions": parts[0], "gpu_samples": parts[1]}


def measure_load(model: Path) -> float:
    """What a fresh worker pays before its first sample: interpreter, imports, SmolLM2 load."""
    code = ("import time, sys; t = time.perf_counter(); sys.path.insert(0, sys.argv[2])\n"
            "from evalcore.backends.base import ModelSettings\nfrom evalcore.backends.hf import HFBackend\n"
            "HFBackend(ModelSettings(path=sys.argv[1], threads=1)); print(time.perf_counter() - t)")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(model), str(ROOT)], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return sorted(times)[1]


def run(work: Path, measured: dict | None = None) -> dict:
    """`measured`: seconds per ARC question of SmolLM2 from the inference benchmark; the load time
    (a fresh worker process up to a loaded model) is measured here."""
    measured = dict(measured or {"sample_s": 0.117})
    measured["load_s"] = measure_load(ROOT / "build" / "models" / "smollm2-135m-instruct")
    scale = 0.2  # the synthetic backend sleeps 20% of the measured costs
    load_s, sample_s = measured["load_s"] * scale, measured["sample_s"] * scale
    n, part = 120, 40  # samples per dataset, samples per partition: 3 partitions a dataset, 240 in all
    ours = one_run(work / "ours", load_s, sample_s, n, part, reload=False)
    reload = one_run(work / "reload", load_s, sample_s, n, part, reload=True)
    work_gpu_s = ours["gpu_samples"] * sample_s
    lower = work_gpu_s / GPUS + load_s
    return {"costs": measured, "scale": scale, "load_s": load_s, "sample_s": sample_s,
            "partition_work_s": part * sample_s, "ours": ours, "reload": reload, "lower_bound": lower,
            "cmd": "python scripts/bench.py --only sched"}


def render(r: dict) -> list[str]:
    o, rl, lb = r["ours"], r["reload"], r["lower_bound"]
    return [
        "## Scheduling (simulated costs, real scheduler)", "",
        f"A real `evalcore eval` (worker processes, SQLite ledger, GPU lease table) on {GPUS} fake GPUs, "
        "4 models (one needing 2 GPUs) x 20 datasets, 120 samples each, 3 partitions per model x dataset "
        f"({o['partitions']} partitions). The synthetic backend sleeps {r['scale']:.0%} of the costs measured "
        f"for SmolLM2 on this machine (a fresh worker up to a loaded model: {r['costs']['load_s']:.1f} s; "
        f"{r['costs']['sample_s'] * 1000:.0f} ms an ARC question): load {r['load_s']:.2f} s, "
        f"{r['sample_s'] * 1000:.1f} ms a sample, so one load is {r['load_s'] / r['partition_work_s']:.0%} of a "
        f"partition's work. Lower bound = total GPU work / GPUs + one load = {lb:.1f} s "
        f"(measured {r.get('measured', '?')}).", "",
        "| policy | makespan | / lower bound | model loads |", "|---|---|---|---|",
        f"| evalcore (long-lived workers, same-model preference) | {o['makespan']:.1f} s | **{o['makespan'] / lb:.2f}** | {o['loads']} |",
        f"| reload per task (OpenCompass) | {rl['makespan']:.1f} s | {rl['makespan'] / lb:.2f} | {rl['loads']} |",
        "",
        f"evalcore vs reload-per-task: **{rl['makespan'] / o['makespan']:.2f}x** faster. The best any policy can "
        f"gain over reload-per-task is 1 + load / partition work = {1 + r['load_s'] / r['partition_work_s']:.2f}x "
        "here; the issue's goal (2x once a load is a fifth of the work) cannot be met by any scheduler: at a "
        "fifth, saving every load gives at most 1.2x. Makespan goal: within 15% of the lower bound. The makespan "
        "includes starting the driver and the worker processes.",
        "", f"Reproduce: `{r['cmd']}`", "",
    ]
