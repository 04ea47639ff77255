"""`make crosscheck`, second part: lm-eval 0.4.13's reference outputs for the standard suite
(evalcore/benchmarks/suite.py), for tests/test_fidelity_suite.py to match sample by sample.

    python scripts/crosscheck_suite.py [--models tiny,smollm2] [--tasks hellaswag,bbh,...] [--convert-only]

Uses what scripts/crosscheck.py sets up (build/lmeval-venv, the tiny model, SmolLM2) and runs
`lm_eval run` the same way: offline, float32 on CPU, one thread, --log_samples, one process per
(model, task). The task files are written to build/crosscheck/suite-tasks/ at run time: each one
`include`s lm-eval's own task YAML from the venv (so prompts, choices, targets, filters and metrics
are lm-eval's) and changes only where the rows come from (a slice in
scripts/crosscheck_tasks/data/, see its README) and the `xc_` name. Two exceptions, written out
in full because lm-eval's files import `evaluate.load("code_eval")`, which needs the hub:
humaneval and mbpp keep lm-eval's prompt, target, exemplars and generation settings and log the
generations with the `bypass` metric (pass@1 is scored by our sandbox, not compared).

Outputs: tests/crosscheck/<model>/<task>.jsonl (formats as in tests/crosscheck/README.md) and
tests/crosscheck/<model>/suite-summary.json. Raw runs stay in build/crosscheck/runs/<model>/<task>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import crosscheck as xc  # noqa: E402  (venv, models, lm_eval runner, timing)

DATA = "scripts/crosscheck_tasks/data"
TASK_DIR = xc.WORK / "suite-tasks"

BBH_TASKS = sorted(p.name for p in (xc.DATA_DIR / "bbh").iterdir()) if (xc.DATA_DIR / "bbh").is_dir() else []

# our task -> (lm-eval YAML under lm_eval/tasks/, split -> slice, output kind, lm-eval docs limit per model)
SUITE = {
    "hellaswag": ("hellaswag/hellaswag.yaml", {"validation": "hellaswag/validation.jsonl"}, "mc", None),
    "winogrande": ("winogrande/default.yaml", {"validation": "winogrande/validation.jsonl"}, "mc", None),
    "boolq": ("super_glue/boolq/default.yaml", {"validation": "boolq_superglue/validation.jsonl"}, "mc", None),
    "commonsense_qa": ("commonsense_qa/default.yaml", {"validation": "commonsense_qa/validation.jsonl"}, "mc", None),
    "openbookqa": ("openbookqa/openbookqa.yaml", {"test": "openbookqa/test.jsonl"}, "mc", None),
    "truthfulqa_mc1": ("truthfulqa/truthfulqa_mc1.yaml", {"validation": "truthfulqa/validation.jsonl"}, "mc", None),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", {"validation": "truthfulqa/validation.jsonl"}, "mc", None),
    "lambada_openai": ("lambada/lambada_openai.yaml", {"test": "lambada_openai/test.jsonl"}, "loglik", None),
    "arc_challenge": ("arc/arc_challenge.yaml", {"validation": "arc_challenge/validation.jsonl"}, "mc", None),
    "siqa": ("siqa/siqa.yaml", {"validation": "siqa/validation.jsonl"}, "mc", None),
    "gsm8k_cot": ("gsm8k/gsm8k-cot.yaml", {"test": "gsm8k/test.jsonl"}, "gen", {"tiny": 10, "smollm2": 4}),
    "bbh": ("bbh/cot_fewshot/{task}.yaml", {"test": "bbh/{task}/test.jsonl"}, "gen", {"tiny": None, "smollm2": None}),
    "humaneval": (None, {"test": "../../../tests/data/openai_humaneval/test.jsonl"}, "gen", {"tiny": 3, "smollm2": 2}),
    "mbpp": (None, {"test": "mbpp/test.jsonl"}, "gen", {"tiny": 5, "smollm2": 3}),
}
# the tiny model's 1024 positions leave no room for 1024 new tokens: lm-eval runs it (and the
# fidelity test our backend) with max_length 4096 there; RoPE has no position limit
TINY_MAX_LENGTH = {"bbh": 4096, "humaneval": 4096}

def _yaml(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"  # JSON is YAML


def _data(split_files: dict[str, str], task: str = "") -> dict:
    files = {s: f"{DATA}/{p.format(task=task)}" for s, p in split_files.items()}
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files},
            "training_split": None, "validation_split": "validation" if "validation" in files else None,
            "test_split": "test" if "test" in files else None}


def write_tasks(lm_tasks: Path) -> None:
    """The xc_ task files (JSON syntax, which YAML reads), including lm-eval's own from the venv."""
    TASK_DIR.mkdir(parents=True, exist_ok=True)
    for old in TASK_DIR.glob("*.yaml"):
        old.unlink()
    for name, (inc, splits, _kind, _lim) in SUITE.items():
        if name == "bbh":
            for t in BBH_TASKS:
                cfg = {"include": str(lm_tasks / inc.format(task=t)), "task": f"xc_bbh_{t}", "tag": [],
                       **_data(splits, t)}
                (TASK_DIR / f"bbh_{t}.yaml").write_text(_yaml(cfg))
            group = {"group": "xc_bbh", "task": [f"xc_bbh_{t}" for t in BBH_TASKS],
                     "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": True,
                                                "filter_list": "get-answer"}], "metadata": {"version": 3.0}}
            (TASK_DIR / "bbh_group.yaml").write_text(_yaml(group))
            continue
        if inc is not None:
            cfg = {"include": str(lm_tasks / inc), "task": f"xc_{name}", "tag": [], **_data(splits)}
        else:  # humaneval, mbpp: from lm-eval's YAML without its code_eval metric (derive_code_tasks.py)
            continue
        (TASK_DIR / f"{name}.yaml").write_text(_yaml(cfg))
    files = {n: f"{DATA}/{SUITE[n][1]['test']}" for n in ("humaneval", "mbpp")}
    import subprocess

    subprocess.run([str(xc.venv_python()), str(xc.TASKS_DIR / "derive_code_tasks.py"), str(lm_tasks), str(TASK_DIR),
                    json.dumps(files)], check=True, cwd=xc.ROOT)


def lm_name(task: str) -> str:
    return "xc_bbh" if task == "bbh" else f"xc_{task}"


def subtasks(task: str) -> list[str]:
    return [f"xc_bbh_{t}" for t in BBH_TASKS] if task == "bbh" else [lm_name(task)]


def run_dir(model: str, task: str) -> Path:
    """Log-likelihood tasks run together in one lm_eval process (one start-up); generation tasks alone."""
    return xc.WORK / "runs" / model / (task if SUITE[task][2] == "gen" else "suite-ll")


def run_one(model: str, tasks: list[str], batch_size: int) -> dict:
    import shutil
    import subprocess

    task = tasks[0]
    out_dir = run_dir(model, task)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    kind, limits = SUITE[task][2], SUITE[task][3]
    args = [f"pretrained={xc.rel(xc.MODELS[model])}", "dtype=float32"]
    if model == "tiny" and task in TINY_MAX_LENGTH:
        args.append(f"max_length={TINY_MAX_LENGTH[task]}")
    cmd = [xc.rel(xc.VENV / "bin" / "lm_eval"), "run", "--model", "hf", "--model_args", *args,
           "--device", "cpu", "--batch_size", str(1 if kind == "gen" else batch_size),
           "--include_path", xc.rel(TASK_DIR), "--tasks", ",".join(lm_name(t) for t in tasks), "--log_samples", "--output_path", xc.rel(out_dir)]
    limit = (limits or {}).get(model)
    if limit:
        cmd += ["--limit", str(limit)]
    if task in ("humaneval", "mbpp"):
        cmd += ["--predict_only", "--confirm_run_unsafe_code"]
    exe = [xc.rel(xc.venv_python()), "scripts/crosscheck_tasks/lmeval_timed.py"] + cmd[1:]
    xc.log(f"{model} / {','.join(tasks)}: $ " + " ".join(exe))
    env = dict(xc.lmeval_env(), XC_TIMING_JSON=str(out_dir / "phases.json"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.perf_counter()
    with open(out_dir / "lm-eval.log", "w") as lf:
        proc = subprocess.run(exe, cwd=xc.ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (out_dir / "lm-eval.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"lm_eval failed (exit {proc.returncode}) for {model}/{task}\n{tail}")
    timing = {"command": cmd, "wall_s": round(time.perf_counter() - t, 2)}
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    xc.log(f"{model} / {','.join(tasks)}: {timing['wall_s']:.0f} s")
    return timing


def convert_mc(name: str, samples: Path) -> list[dict]:
    """One line per (document, request): context, continuation, loglikelihood, greedy, lm-eval's
    target (as logged: an index, a letter, or the shared continuation of a multiple-input task)
    and per-document metrics."""
    rows = []
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        n = len(s["arguments"])
        for j in range(n):
            a = s["arguments"][f"gen_args_{j}"]
            ll, greedy = s["resps"][j][0]
            rows.append({"task": name, "doc": s["doc_id"], "request": j, "n_requests": n, "context": a["arg_0"],
                         "continuation": a["arg_1"], "loglikelihood": float(ll), "is_greedy": xc.parse_bool(greedy),
                         "target": s["target"], **{m: s[m] for m in s["metrics"]}})
    return sorted(rows, key=lambda r: (r["doc"], r["request"]))


def convert(model: str, task: str) -> tuple[list[dict], dict]:
    out_dir = run_dir(model, task)
    results = json.loads(xc.find_one(str(out_dir / "*" / "results_*.json")).read_text())
    rows = []
    for sub in subtasks(task):
        samples = xc.find_one(str(out_dir / "*" / f"samples_{sub}_*.jsonl"))
        name = sub.removeprefix("xc_")
        rows += xc.convert_gen(sub, name, samples) if SUITE[task][2] == "gen" else convert_mc(name, samples)
    return rows, results


def write_outputs(model: str, tasks: list[str]) -> dict:
    dest = xc.OUT / model
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "suite-summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    mdir = xc.MODELS[model]
    summary.update({"model": {"name": model, "path": xc.rel(mdir), "dtype": "float32", "device": "cpu",
                              "model.safetensors_sha256": xc.sha256(mdir / "model.safetensors")},
                    "versions": xc.venv_versions()})
    summary.setdefault("tasks", {})
    for task in tasks:
        rows, results = convert(model, task)
        with open(dest / f"{task}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        timing = json.loads((run_dir(model, task) / "timing.json").read_text())
        subs = subtasks(task)
        summary["tasks"][task] = {
            "lmeval_task": lm_name(task), "command": " ".join(timing["command"]), "wall_s": timing["wall_s"],
            "n_docs": sum(int(results["n-samples"][s]["effective"]) for s in subs), "n_lines": len(rows),
            "metrics": xc.metrics_of(results, lm_name(task)),
            "lmeval_config": {s: results["configs"][s] for s in subs[:1]}, "output": f"{task}.jsonl"}
        xc.log(f"wrote {xc.rel(dest / (task + '.jsonl'))}: {len(rows)} lines")
    summary["tasks"] = dict(sorted(summary["tasks"].items()))
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lm-eval reference outputs for the standard suite")
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--tasks", default=",".join(SUITE), help="a subset, comma-separated (default: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="log-likelihood tasks; generation runs at 1")
    ap.add_argument("--convert-only", action="store_true")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in SUITE] + [m for m in models if m not in xc.MODELS]
    if bad:
        raise SystemExit(f"unknown task/model {', '.join(bad)}; tasks: {', '.join(SUITE)}; models: {', '.join(xc.MODELS)}")
    xc.check_data()
    xc.ensure_venv()
    if not args.convert_only:
        xc.ensure_models(models)
        lm_tasks = Path(json.loads(__import__("subprocess").run(
            [str(xc.venv_python()), "-c", "import json, lm_eval, os; print(json.dumps(os.path.dirname(lm_eval.__file__)))"],
            check=True, capture_output=True, text=True).stdout)) / "tasks"
        write_tasks(lm_tasks)
        ll = [t for t in tasks if SUITE[t][2] != "gen"]
        for m in models:
            if ll:
                run_one(m, ll, args.batch_size)
            for t in tasks:
                if SUITE[t][2] == "gen":
                    run_one(m, [t], args.batch_size)
    for m in models:
        write_outputs(m, tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
