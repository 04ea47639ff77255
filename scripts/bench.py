"""`make bench`: measure, then write docs/benchmarks.md. Every figure is a ratio to a reference
measured in the same run on the same machine (these machines are shared and noisy).

    python scripts/bench.py [--only SECTION ...] [--bundle-mb N]

Sections: bundles (prefetch / verify / import / start-up), engine (ledger throughput, model loads),
inference (evalcore vs lm-evaluation-harness, same requests), exact (scoring phase, whole process and
tokens vs the prefix-tree floor, few-shot tasks included), gpu (scripts/gpu_check.py: on CPU with a
small model unless a CUDA device is visible), cli (whole process: the `evalcore eval` and `lm_eval run`
command lines from start to exit, same task files and local data), sched (makespan on 8 fake GPUs). Results of sections not run this
time are kept from the previous docs/benchmarks.md (build/bench/results.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUILD = ROOT / "build" / "bench"
RESULTS = BUILD / "results.json"
DOC = ROOT / "docs" / "benchmarks.md"


def timed(cmd: list[str], env: dict | None = None, repeat: int = 3, setup=None) -> float:
    """Median wall time of a command; `setup` runs before each repetition (not timed)."""
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--bundle-mb", type=int, default=1024)
    args = ap.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    sections = {"bundles": lambda: bench_bundles(args.bundle_mb), "engine": bench_engine,
                "inference": bench_inference, "exact": bench_exact, "cli": bench_cli, "gpu": bench_gpu,
                "sched": lambda: bench_sched(results)}
    for name, fn in sections.items():
        if args.only is None or name in args.only:
            print(f"== {name}", flush=True)
            results[name] = fn()
            results[name]["measured"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.write_text(json.dumps(results, indent=1))
    DOC.write_text(render(results))
    print(f"wrote {DOC}")


def bench_bundles(total_mb: int) -> dict:
    from scripts.bench_bundles import run

    return run(BUILD / "bundles", total_mb, timed)


def bench_engine() -> dict:
    from scripts.bench_engine import run

    return run(BUILD / "engine")


def bench_sched(results: dict) -> dict:
    """Costs from the inference section's SmolLM2 ARC run when there is one."""
    from scripts.bench_sched import run

    costs = None
    inf = results.get("inference", {}).get("models", {}).get("SmolLM2-135M-Instruct")
    if inf:
        arc = next(x for x in inf if x["task"] == "arc")
        costs = {"load_s": inf[0].get("load_s", 3.0), "sample_s": arc["seconds"]["ours"] / arc["n"]}
    return run(BUILD / "sched", costs)


def bench_inference() -> dict:
    from scripts.bench_inference import run

    return run(BUILD)


def bench_exact() -> dict:
    from scripts.bench_exact import run

    return run(BUILD)


def bench_cli() -> dict:
    from scripts.bench_cli import run

    return run()


def bench_gpu() -> dict:
    """scripts/gpu_check.py in its own process (CUDA when visible, else CPU with a small model)."""
    out = BUILD / "gpu_check.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--threads", "1", "--json", str(out)],
                   check=True, cwd=ROOT)
    return json.loads(out.read_text())


NOTES = re.compile(r"<!-- notes:(\w+)[^>]*-->\n.*?<!-- /notes:\1 -->\n", re.S)


def kept_notes(old: str) -> dict[str, str]:
    """The hand-written blocks of the previous docs/benchmarks.md (analysis that no script can
    measure: profiles, why a goal is missed), by name; `render` puts each back in its place."""
    return {m.group(1): m.group(0) for m in NOTES.finditer(old)}


def render(results: dict) -> str:
    from scripts.bench_bundles import render as render_bundles

    notes = kept_notes(DOC.read_text()) if DOC.exists() else {}

    out = ["# Benchmarks", "",
           "Written by `make bench` (`python scripts/bench.py`). Every figure is a ratio to a reference "
           "measured in the same run on the same machine; absolute times are given for context only.",
           f"Machine: {platform.machine()}, {_cores()} cores, Python {platform.python_version()}.", ""]
    from scripts.bench_engine import render as render_engine

    if "bundles" in results:
        out += render_bundles(results["bundles"])
    if "engine" in results:
        out += render_engine(results["engine"])
    if "inference" in results:
        from scripts.bench_inference import render as render_inference

        out += render_inference(results["inference"])
    if "exact" in results:
        from scripts.bench_exact import render as render_exact

        out += render_exact(results["exact"]) + ["", notes.get("exact", ""),
                                                  f"Reproduce: `{results['exact']['cmd']}`", ""]
    if "cli" in results:
        from scripts.bench_cli import render as render_cli

        out += render_cli(results["cli"]) + ["", f"Reproduce: `{results['cli']['cmd']}`", ""]
    if "goals" in notes:
        out += [notes["goals"]]
    if "gpu" in results:
        from scripts.gpu_check import render as render_gpu

        out += render_gpu(results["gpu"]) + [""]
    if "sched" in results:
        from scripts.bench_sched import render as render_sched

        out += render_sched(results["sched"])
    return "\n".join(out) + "\n"


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
