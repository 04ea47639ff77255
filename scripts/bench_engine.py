"""Engine benchmarks: ledger claim+complete throughput with 1, 4 and 8 processes, and model loads
of a real `evalcore eval` run (2 models x 6 datasets x several partitions, 2 workers)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARC = ROOT / "bundles" / "demo" / "data" / "ai2_arc" / "ARC-Easy" / "validation.jsonl"


def _loop(args):
    from scripts.ledger_workload import claim_complete_loop

    path, run_id, n, go = args
    while not os.path.exists(go):
        time.sleep(0.001)
    return len(claim_complete_loop(path, run_id, n))


def ledger_throughput(work: Path, procs: int, n_parts: int = 4000) -> float:
    from evalcore.engine.ledger import Ledger, PartitionRow

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "ledger.db"
    rows = [PartitionRow(f"m/d/{i:07d}", "m", "d", "k", "{}", "{}", i, i + 1, 1.0) for i in range(n_parts)]
    with Ledger(path) as led:
        led.create_run("bench", str(work), "{}", [], rows, now=time.time())
    go = str(work / "go")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        res = pool.map_async(_loop, [(str(path), "bench", n_parts, go)] * procs)
        time.sleep(1.5)  # let the interpreters start
        t = time.perf_counter()
        Path(go).touch()
        counts = res.get()
        elapsed = time.perf_counter() - t
    assert sum(counts) == n_parts
    return n_parts / elapsed


def model_loads(work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    datasets = "".join(
        f'\n[[datasets]]\nabbr = "arc{i}"\npath = "{ARC}"\nmode = "ll"\ntemplate = "Question: {{question}}\\nAnswer:"\n'
        f'choices = "choices.text"\nlabel = "answerKey"\n' for i in range(6))
    models = "".join(f'\n[[models]]\nabbr = "{m}"\npath = "{m}"\nbackend = "scripted"\n'
                     f'backend_options = {{ load_seconds = 0.5, sample_seconds = 0.002 }}\n' for m in ("alpha", "beta"))
    plan = work / "plan.toml"
    plan.write_text(f'[run]\nwork_dir = "{work / "outputs"}"\nmax_num_workers = 2\nmax_partition_size = 200\n'
                    f'limit = 150\n' + models + datasets)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), EVALCORE_STATE_DIR=str(work / "state"), HF_HOME=str(work / "hf"))
    r = subprocess.run([sys.executable, "-m", "cli.evalcore_cli", "eval", str(plan)], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    run_dir = Path(next(x for x in r.stdout.splitlines() if x.startswith("run ")).split(": ", 1)[1])
    con = sqlite3.connect(run_dir / "ledger.db")
    parts = con.execute("SELECT count(*) FROM partitions").fetchone()[0]
    loads = con.execute("SELECT count(*) FROM loads").fetchone()[0]
    con.close()
    status_s = _median_wall([sys.executable, "-m", "cli.evalcore_cli", "status", str(run_dir)], env)
    python_s = _median_wall([sys.executable, "-c", "pass"], env)
    return {"models": 2, "datasets": 6, "workers": 2, "partitions": parts, "loads": loads,
            "status_s": status_s, "python_s": python_s}


def _median_wall(cmd: list[str], env: dict, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def run(work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    out = {"ledger": {}}
    for procs in (1, 4, 8):
        rates = [ledger_throughput(work / f"ledger-{procs}", procs) for _ in range(3)]
        out["ledger"][str(procs)] = sorted(rates)[1]
        print(f"  ledger, {procs} process(es): {out['ledger'][str(procs)]:.0f} claim+complete/s", flush=True)
    out["loads"] = model_loads(work / "loads")
    print(f"  loads: {json.dumps(out['loads'])}", flush=True)
    out["cmd"] = "python scripts/bench.py --only engine"
    return out


def render(r: dict) -> list[str]:
    led = r["ledger"]
    lo = r["loads"]
    bound = lo["models"] * lo["workers"]
    return [
        "## Engine", "",
        f"Ledger: claim + complete of one partition, processes started together on one ledger file "
        f"(median of 3, measured {r.get('measured', '?')}). Goal: at least 1,000/s with 8 processes.", "",
        "| processes | claim+complete per second | goal |", "|---|---|---|",
        *(f"| {p} | {led[p]:,.0f} | {'>= 1,000 ' + ('(met)' if led[p] >= 1000 else '(missed)') if p == '8' else ''} |"
          for p in ("1", "4", "8")), "",
        f"Model loads: a real `evalcore eval` of {lo['models']} models x {lo['datasets']} datasets in "
        f"{lo['partitions']} partitions with {lo['workers']} workers (scripted backend, 0.5 s a load): "
        f"**{lo['loads']} loads** (goal: no more than models x workers = {bound}; "
        f"{'met' if lo['loads'] <= bound else 'missed'}). A reload-per-task policy would load {lo['partitions']} times.",
        "",
        f"`evalcore status` on that run: {lo['status_s'] * 1000:.0f} ms wall (bare `python -c pass`: "
        f"{lo['python_s'] * 1000:.0f} ms); it reads SQLite only (no torch, no HF library). Goal < 500 ms.",
        "", f"Reproduce: `{r['cmd']}`", "",
    ]
