"""Whole process, the real command lines: `evalcore eval` vs `lm_eval run` (lm-eval 0.4.13), start to exit.

    python scripts/bench_cli.py [--tasks arc_easy,hellaswag,...] [--limit 10] [--mmlu-limit 3] [--gen-limit 2]
                                [--repeat 2]

Both tools read the same lm-eval task files (scripts/crosscheck_tasks/ and lm-eval's own hellaswag
and gsm8k-cot YAML included from its venv with the committed local slices, as scripts/crosscheck_suite.py
writes them) through `--include-path`, offline (HF_*_OFFLINE=1, a private HF_HOME), on the same
local SmolLM2-135M-Instruct folder, float32, CPU, batch size 16, one torch thread each
(OMP_NUM_THREADS=1; evalcore's plan also says `threads = 1`, one worker), the same `--limit`
(documents per task; MMLU: per subject), MMLU 5-shot by `num_fewshot` (lm-eval `--num_fewshot 5`,
evalcore's plan `fewshot = 5`). Each command is a subprocess timed from start to exit (os.wait4:
wall time and peak RSS), the two tools alternating (ours, lm-eval, lm-eval, ours, ...); medians.
Agreement: lm-eval's logged samples against `evalcore report --samples` (outside the timing):
per-document accuracy for multiple choice, the generated text for generation.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "cli"
DATA = "scripts/crosscheck_tasks/data"
MODEL = ROOT / "build" / "models" / "smollm2-135m-instruct"
GOALS = {"mc": 2.0, "gen": 1.3}

# row -> (lm-eval task or group name, include folder, num_fewshot or None, kind)
TASKS = {
    "arc_easy": ("xc_arc_easy", "scripts/crosscheck_tasks", None, "mc"),
    "hellaswag": ("xb_hellaswag", "build/bench/cli/tasks", None, "mc"),
    "mmlu0": ("xc_mmlu", "scripts/crosscheck_tasks", None, "mc"),
    "mmlu5": ("xc_mmlu", "scripts/crosscheck_tasks", 5, "mc"),
    "gsm8k": ("xc_gsm8k", "scripts/crosscheck_tasks", None, "gen"),
    "gsm8k_cot": ("xb_gsm8k_cot", "build/bench/cli/tasks", None, "gen"),
}


def lmeval_venv() -> Path:
    sys.path.insert(0, str(ROOT))
    from scripts.crosscheck import VENV, ensure_venv

    ensure_venv()
    return VENV


def write_tasks(venv: Path) -> None:
    """hellaswag and gsm8k-cot: lm-eval's own YAML, included, reading the committed slices."""
    lm_tasks = next(venv.glob("lib/python3*/site-packages/lm_eval/tasks"))
    d = ROOT / TASKS["hellaswag"][1]
    d.mkdir(parents=True, exist_ok=True)
    files = {"xb_hellaswag": ("hellaswag/hellaswag.yaml", "validation", "hellaswag/validation.jsonl"),
             "xb_gsm8k_cot": ("gsm8k/gsm8k-cot.yaml", "test", "gsm8k/test.jsonl")}
    for name, (inc, split, data) in files.items():
        cfg = {"include": str(lm_tasks / inc), "task": name, "tag": [], "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": {split: f"{DATA}/{data}"}}, "training_split": None,
               "validation_split": split if split == "validation" else None,
               "test_split": split if split == "test" else None}
        (d / f"{name}.yaml").write_text(json.dumps(cfg, indent=1) + "\n")   # JSON is YAML


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
             HF_HOME=str(WORK / "hf-home"), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return e


def rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


def commands(task: str, limit: int, out: Path, venv: Path) -> dict[str, list[str]]:
    lm_task, include, shots, _ = TASKS[task]
    # python -m lm_eval: the venv's `lm_eval` script may carry the shebang of the folder it was built in
    lm = [rel(venv / "bin" / "python"), "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={rel(MODEL)}",
          "dtype=float32", "--device", "cpu", "--batch_size", "16", "--include_path", include, "--tasks", lm_task,
          "--limit", str(limit), "--log_samples", "--output_path", rel(out / "lmeval")]
    if shots is not None:
        lm += ["--num_fewshot", str(shots)]
    plan = out / "plan.toml"
    plan.write_text("\n".join([
        "[run]", f'work_dir = "{out / "evalcore"}"', "max_num_workers = 1", "threads = 1", f"limit = {limit}",
        f'include_path = ["{ROOT / include}"]', "", "[[models]]", 'abbr = "smollm2"', f'path = "{MODEL}"',
        'model_kwargs = { torch_dtype = "float32" }', "batch_size = 16", "", "[[datasets]]", f'task = "{lm_task}"',
        *([f"fewshot = {shots}"] if shots is not None else []), ""]))
    ours = [rel(Path(sys.executable).parent / "evalcore"), "eval", rel(plan)]
    return {"ours": ours, "lmeval": lm}


def timed(cmd: list[str], log: Path, ours: bool) -> dict:
    e = dict(env(), PYTHONPATH=str(ROOT)) if ours else env()   # this checkout's evalcore, not the venv's
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{log.read_text(errors='replace')[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def lmeval_docs(out: Path) -> dict[tuple[str, int], dict]:
    rows = {}
    for p in glob.glob(str(out / "lmeval" / "*" / "samples_*.jsonl")):
        task = Path(p).name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in Path(p).read_text().splitlines():
            s = json.loads(line)
            rows[(task, s["doc_id"])] = {"acc": s.get("acc"), "gen": s["resps"][0][0] if "exact_match" in s else None}
    return rows


def evalcore_docs(out: Path) -> dict[tuple[str, int], dict]:
    run = next(p for p in (out / "evalcore").iterdir() if p.is_dir())
    path = out / "samples.jsonl"
    subprocess.run([str(Path(sys.executable).parent / "evalcore"), "report", str(run), "--samples", str(path)],
                   cwd=ROOT, env=dict(env(), PYTHONPATH=str(ROOT)), check=True, capture_output=True)
    rows = {}
    for line in path.read_text().splitlines():
        s = json.loads(line)
        gen = s["requests"][0].get("generation") if s["requests"] else None
        rows[(s["dataset"], s["index"])] = {"acc": s["metrics"].get("acc"), "gen": gen}
    return rows


def agreement(out: Path, kind: str) -> str:
    try:
        a, b = evalcore_docs(out), lmeval_docs(out)
    except Exception as e:  # noqa: BLE001 - the timing stands; say why agreement is missing
        return f"not compared ({type(e).__name__}: {str(e)[:80]})"
    keys = sorted(set(a) & set(b))
    if not keys:
        return f"not compared (no common documents: {len(a)} evalcore, {len(b)} lm-eval)"
    field = "gen" if kind == "gen" else "acc"
    same = sum(a[k][field] == b[k][field] for k in keys)
    what = "identical generations" if kind == "gen" else "same per-document acc"
    return f"{same}/{len(keys)} {what}" + ("" if len(keys) == len(a) == len(b) else f" ({len(a)} / {len(b)} docs)")


def compare(task: str, limit: int, repeat: int, venv: Path) -> dict:
    runs: dict[str, list[dict]] = {"ours": [], "lmeval": []}
    kind = TASKS[task][3]
    detail = ""
    for i in range(repeat):
        for tool in (("ours", "lmeval") if i % 2 == 0 else ("lmeval", "ours")):
            out = WORK / "runs" / task / tool
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            cmd = commands(task, limit, out, venv)
            load = os.getloadavg()[0]
            x = timed(cmd[tool], out / "log.txt", tool == "ours")
            x["load1"] = round(load, 2)
            runs[tool].append(x)
            print(f"    {task} {tool}: {x['wall_s']:.1f} s, peak RSS {x['peak_rss_mb']:.0f} MiB, load {load:.2f}",
                  flush=True)
    # agreement from the last pair: both outputs of one task side by side
    both = WORK / "runs" / task / "both"
    shutil.rmtree(both, ignore_errors=True)
    both.mkdir(parents=True)
    for tool in ("ours", "lmeval"):
        src = WORK / "runs" / task / tool
        shutil.copytree(src / ("evalcore" if tool == "ours" else "lmeval"),
                        both / ("evalcore" if tool == "ours" else "lmeval"))
    detail = agreement(both, kind)
    med = {t: statistics.median(r["wall_s"] for r in runs[t]) for t in runs}
    return {"task": task, "kind": kind, "limit": limit, "repeat": repeat, "wall_s": med,
            "peak_rss_mb": {t: max(r["peak_rss_mb"] for r in runs[t]) for t in runs},
            "ratio": med["lmeval"] / med["ours"], "agreement": detail,
            "pairs": [[o["wall_s"], lm["wall_s"]] for o, lm in zip(runs["ours"], runs["lmeval"], strict=True)],
            "load1": [r["load1"] for t in runs for r in runs[t]],
            "commands": {t: " ".join(c) for t, c in commands(task, limit, WORK / "runs" / task / "ours", venv).items()}}


def run(tasks: list[str] | None = None, limit: int = 10, mmlu_limit: int = 3, gen_limit: int = 2,
        repeat: int = 2) -> dict:
    venv = lmeval_venv()
    write_tasks(venv)
    load = os.getloadavg()
    t = time.time()
    rows = [compare(task, gen_limit if TASKS[task][3] == "gen" else mmlu_limit if "mmlu" in task else limit, repeat, venv)
            for task in tasks or TASKS]
    return {"model": "SmolLM2-135M-Instruct", "rows": rows, "load": [round(x, 2) for x in load],
            "load_after": [round(x, 2) for x in os.getloadavg()], "minutes": round((time.time() - t) / 60, 1),
            "cmd": "python scripts/bench.py --only cli"}


def render(r: dict) -> list[str]:
    loads = [x for row in r["rows"] for x in row["load1"]] or [0.0]
    lines = ["## Whole process, the command lines: `evalcore eval` vs `lm_eval run` (lm-eval 0.4.13)", "",
             f"{r['model']} from the same local folder, float32, CPU, batch size 16, one torch thread and one process "
             "each (`OMP_NUM_THREADS=1`; evalcore's plan: `threads = 1`, one worker), offline, the same lm-eval task "
             "files and local data slices (`--include-path`), the same `--limit`; each command timed from start to "
             "exit (imports, model load, task building, scoring, metrics, writing results), the two tools "
             f"alternating, medians of {r['rows'][0]['repeat']} runs each (measured {r.get('measured', '?')}, "
             f"{r['minutes']} min in all; load average before {r['load']}, after {r['load_after']}; 1-minute load at the "
             f"start of the runs {min(loads):.1f} to {max(loads):.1f}: the machine was shared). Ratio = lm-eval / evalcore (higher is better). "
             "Limits: documents per task (MMLU: per subject, 4 subjects); kept small so the whole comparison fits "
             "in about 20 minutes on this shared 2-core machine (it took longer at this load), so start-up is a large "
             "share of every run: lm-eval indexes every task file it ships and imports its model stack before the "
             "first request (most of its wall time at these limits), evalcore reads the plan, checks it and starts "
             "one worker. With larger limits the whole-process ratio moves toward the scoring-phase ratio of the "
             "section above.", "",
             "| task | limit | evalcore | lm-eval | ratio | goal | peak RSS evalcore / lm-eval | agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        goal = GOALS[x["kind"]]
        met = "met" if x["ratio"] >= goal else "missed"
        lines.append(f"| {x['task']} | {x['limit']} | {x['wall_s']['ours']:.1f} s | {x['wall_s']['lmeval']:.1f} s | "
                     f"**{x['ratio']:.2f}x** | >= {goal:g} ({met}) | {x['peak_rss_mb']['ours']:.0f} / "
                     f"{x['peak_rss_mb']['lmeval']:.0f} MiB | {x['agreement']} |")
    lines += ["", "The command lines (one pair; `plan.toml` is written next to the run):", ""]
    for x in r["rows"]:
        lines.append(f"- {x['task']}: `{x['commands']['ours']}` vs `{x['commands']['lmeval']}`")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=10, help="documents per multiple-choice task")
    ap.add_argument("--mmlu-limit", type=int, default=3, help="documents per MMLU subject (4 subjects)")
    ap.add_argument("--gen-limit", type=int, default=2, help="documents per generation task")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    print(json.dumps(run(a.tasks.split(","), a.limit, a.mmlu_limit, a.gen_limit, a.repeat), indent=1))


if __name__ == "__main__":
    main()
