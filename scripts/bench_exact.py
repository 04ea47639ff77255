"""How close to the exact-scoring limit: evalcore's HF backend vs lm-evaluation-harness 0.4.13's
HFLM on identical requests, with the tokens each runs through the model and the floor.

    python scripts/bench_exact.py                        # the comparison, as JSON
    python scripts/bench_exact.py --worker ours|lmeval --model DIR --requests FILE ...

Tasks (requests built by our task definitions, which the crosscheck shows equal lm-eval's):
ARC-Easy 0-shot, MMLU 0-shot, MMLU 5-shot (the subject's five dev questions in front of every
question, lm-eval's first_n), GSM8K (lm-eval's 5 random exemplars per question) and GSM8K with
fixed exemplars (the same five in front of every question, as gsm8k_cot's fixed exemplars); and two
whose requests lm-eval itself builds, from its own task YAML with the committed local slices (as
scripts/bench_cli.py includes them): HellaSwag (0-shot, 4 endings per context) and gsm8k_cot (its
8 fixed chain-of-thought exemplars, stop strings `Q:`, `</s>`, `<|im_end|>`).
Each tool runs in its own process (1 torch thread, batch size 16, float32, CPU, offline), the
two alternating; per run: the whole process from start to exit (imports, model load, requests)
and the scoring phase (after one warm-up request). Tokens run through the model are counted in
both (every position of every forward input, padding included: HFLM's `_model_call` /
`_model_generate` inputs; our backend's counters); the floor is the number of distinct prefixes
of the token sequences the task needs (the deduplicated prefix tree; for generation plus the
generated tokens), the least any exact causal scorer must compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "scripts" / "crosscheck_tasks" / "data"
TASKS = ("arc", "hellaswag", "mmlu0", "mmlu5", "gsm8k", "gsm8k_fixed", "gsm8k_cot")
LMEVAL_BUILT = {"hellaswag": "xb_hellaswag", "gsm8k_cot": "xb_gsm8k_cot"}   # task -> bench_cli's task name
GOALS = {"scoring_mmlu5": 4.0, "whole_mc": 2.0, "gen": 1.3, "floor": 1.25}


def _rows(p: Path) -> list[dict]:
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def requests(task: str, n: int) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from evalcore.plan.spec import parse_plan
    from evalcore.plan.tasks import build_context, fewshot_rows, task_for

    def named(name: str):
        return task_for(parse_plan({"datasets": [{"name": name}]}).datasets[0])

    if task == "arc":
        t = named("arc_easy_ppl")
        return [{"context": build_context(t, d, []), "continuations": [t.target_delimiter + c for c in t.choices(d)]}
                for d in _rows(DATA / "arc_easy" / "validation.jsonl")[:n]]
    if task in ("mmlu0", "mmlu5"):
        t = named("mmlu_ppl")
        shots = 5 if task == "mmlu5" else 0
        t5 = dataclasses.replace(t, fewshot=shots, group=None)
        subjects = sorted(p.name for p in (DATA / "mmlu").iterdir())
        per = -(-n // len(subjects))
        out = []
        for s in subjects:
            dev = _rows(DATA / "mmlu" / s / "dev.jsonl")
            for d in _rows(DATA / "mmlu" / s / "test.jsonl")[:per]:
                ctx = build_context(t5, d, fewshot_rows(t5, dev, d))
                out.append({"context": ctx, "continuations": [t.target_delimiter + c for c in t.choices(d)]})
        return out[:n]
    t = named("gsm8k_gen")
    if task == "gsm8k_fixed":
        t = dataclasses.replace(t, sampler="first_n")
    train = _rows(DATA / "gsm8k" / "train.jsonl.gz")
    return [{"prompt": build_context(t, d, fewshot_rows(t, train, d, i)), "stop": list(t.stop)}
            for i, d in enumerate(_rows(DATA / "gsm8k" / "test.jsonl")[:n])]


def requests_lmeval(task: str, n: int) -> list[dict]:
    """The first n documents' requests as lm-eval builds them (run in lm-eval's venv)."""
    sys.path.insert(0, str(ROOT))
    from lm_eval.tasks import TaskManager, get_task_dict

    from scripts.bench_cli import TASKS as CLI_TASKS

    os.chdir(ROOT)   # the task files name the data slices relative to the checkout
    name = LMEVAL_BUILT[task]
    t = get_task_dict([name], TaskManager(include_path=str(ROOT / CLI_TASKS[task][1])))[name]
    t.build_all_requests(limit=n, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in t.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    out = []
    for doc_id in sorted(by_doc):
        insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
        if insts[0].request_type == "generate_until":
            out.append({"prompt": insts[0].args[0], "stop": list(insts[0].args[1]["until"])})
        else:
            assert len({i.args[0] for i in insts}) == 1, "one context per document"
            out.append({"context": insts[0].args[0], "continuations": [i.args[1] for i in insts]})
    return out


def worker_ours(args, reqs: list[dict]) -> dict:
    sys.path.insert(0, str(ROOT))
    from evalcore.backends.base import GenRequest, LoglikRequest, ModelSettings
    from evalcore.backends.hf import HFBackend
    from evalcore.backends.prefix import prefix_floor

    be = HFBackend(ModelSettings(path=args.model, batch_size=args.batch_size, threads=args.threads))
    gen = "prompt" in reqs[0]
    if gen:
        be.generate([GenRequest(reqs[0]["prompt"], 2, ())])
    else:
        be.loglikelihood([LoglikRequest(reqs[0]["context"], tuple(reqs[0]["continuations"]))])
    be.tokens_run = be.positions_run = 0
    be._prefixes.clear()
    t = time.perf_counter()
    if gen:
        out = be.generate([GenRequest(r["prompt"], args.max_new, tuple(r["stop"])) for r in reqs])
    else:
        out = [list(x.logprobs) for x in be.loglikelihood([LoglikRequest(r["context"], tuple(r["continuations"]))
                                                           for r in reqs])]
    seconds = time.perf_counter() - t
    if gen:   # prompts' prefix tree + the generated tokens (a lower bound: the stop token is not counted)
        prompts = [be._encode_prompt(r["prompt"]) for r in reqs]
        floor = prefix_floor(prompts) + sum(max(0, len(be.tokenizer.encode(g, add_special_tokens=False)) - 1)
                                            for g in out)
    else:
        seqs = []
        for r in reqs:
            for c in r["continuations"]:
                ctx, cont = be.encode_pair(r["context"], c)
                seqs.append(tuple(ctx + cont)[:-1])
        floor = prefix_floor(seqs)
    return {"seconds": seconds, "tokens": be.positions_run, "real_tokens": be.tokens_run, "floor": floor,
            "out": out, "paths": be.fast_paths()}


def worker_lmeval(args, reqs: list[dict]) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    count = {"tokens": 0}
    call, gen_fn = HFLM._model_call, HFLM._model_generate

    def model_call(self, inps, *a, **kw):
        count["tokens"] += int(inps.numel())
        return call(self, inps, *a, **kw)

    def model_generate(self, context, *a, **kw):
        out = gen_fn(self, context, *a, **kw)
        steps = max(0, out.shape[1] - context.shape[1] - 1)
        count["tokens"] += int(context.numel()) + context.shape[0] * steps
        return out

    HFLM._model_call, HFLM._model_generate = model_call, model_generate
    lm = HFLM(pretrained=args.model, batch_size=args.batch_size, dtype="float32", device="cpu")
    gen = "prompt" in reqs[0]
    if gen:
        lm.generate_until([Instance("generate_until", {}, (reqs[0]["prompt"], {"until": [], "max_gen_toks": 2,
                                                                                "do_sample": False}), 0)],
                          disable_tqdm=True)
    else:
        lm.loglikelihood([Instance("loglikelihood", {}, (reqs[0]["context"], reqs[0]["continuations"][0]), 0)],
                         disable_tqdm=True)
    count["tokens"] = 0
    t = time.perf_counter()
    if gen:
        out = lm.generate_until([Instance("generate_until", {}, (r["prompt"], {"until": r["stop"], "max_gen_toks":
                                                                              args.max_new, "do_sample": False}), i)
                                 for i, r in enumerate(reqs)], disable_tqdm=True)
    else:
        inst = [Instance("loglikelihood", {}, (r["context"], c), i) for i, r in enumerate(reqs) for c in r["continuations"]]
        flat = [ll for ll, _ in lm.loglikelihood(inst, disable_tqdm=True)]
        out, k = [], 0
        for r in reqs:
            out.append(flat[k:k + len(r["continuations"])])
            k += len(r["continuations"])
    return {"seconds": time.perf_counter() - t, "tokens": count["tokens"], "out": out}


def measure(tool: str, model: Path, task: str, n: int, threads: int, max_new: int) -> dict:
    from scripts.crosscheck import ensure_venv, venv_python

    req_file = ROOT / "build" / "bench" / f"exact-{task}-{n}.json"
    req_file.parent.mkdir(parents=True, exist_ok=True)
    if tool == "lmeval" or task in LMEVAL_BUILT:
        ensure_venv()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HOME=str(ROOT / "build" / "bench" / "hf"), OMP_NUM_THREADS=str(threads))
    if not req_file.exists() and task in LMEVAL_BUILT:
        from scripts.bench_cli import write_tasks
        from scripts.crosscheck import VENV

        write_tasks(VENV)
        r = subprocess.run([str(venv_python()), __file__, "--build", task, "--n", str(n), "--requests", str(req_file)],
                           env=env, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"building {task} requests with lm-eval failed: {r.stderr[-2000:]}")
    elif not req_file.exists():
        req_file.write_text(json.dumps(requests(task, n)))
    py = str(venv_python()) if tool == "lmeval" else sys.executable
    start = time.perf_counter()
    r = subprocess.run([py, __file__, "--worker", tool, "--model", str(model), "--requests", str(req_file),
                        "--threads", str(threads), "--max-new", str(max_new)],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{tool} failed: {r.stderr[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    got["process_s"] = time.perf_counter() - start
    return got


def compare(model: Path, task: str, n: int, threads: int, max_new: int, repeat: int) -> dict:
    runs: dict[str, list[dict]] = {"ours": [], "lmeval": []}
    for i in range(repeat):
        for tool in (("ours", "lmeval") if i % 2 == 0 else ("lmeval", "ours")):
            runs[tool].append(measure(tool, model, task, n, threads, max_new))
            x = runs[tool][-1]
            print(f"    {task} {tool}: scoring {x['seconds']:.2f} s, process {x['process_s']:.2f} s, "
                  f"{x['tokens']} tokens", flush=True)
    med = {t: {k: statistics.median(r[k] for r in runs[t]) for k in ("seconds", "process_s")} for t in runs}
    a, b = runs["ours"][0]["out"], runs["lmeval"][0]["out"]
    if "prompt" in json.loads((ROOT / "build" / "bench" / f"exact-{task}-{n}.json").read_text())[0]:
        detail = f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)} identical generations"
    else:
        diff = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
        detail = f"max abs ll diff {diff:.1e}"
    ours = runs["ours"][0]
    return {"task": task, "n": n, "repeat": repeat, "seconds": {t: med[t]["seconds"] for t in med},
            "process_s": {t: med[t]["process_s"] for t in med},
            "scoring_ratio": med["lmeval"]["seconds"] / med["ours"]["seconds"],
            "process_ratio": med["lmeval"]["process_s"] / med["ours"]["process_s"],
            "tokens": {"ours": ours["tokens"], "lmeval": runs["lmeval"][0]["tokens"], "floor": ours["floor"]},
            "agreement": detail, "paths": ours["paths"],
            "pairs": [[o["seconds"], lm["seconds"]] for o, lm in zip(runs["ours"], runs["lmeval"], strict=True)]}


def default_n(task: str) -> int:
    return 2 if "gsm8k" in task else 10 if task == "hellaswag" else 20


def run(work: Path, plan: list[tuple[str, int, int]] | None = None, repeat: int = 2, max_new: int = 64) -> dict:
    sys.path.insert(0, str(ROOT))
    from scripts.get_smollm2 import main as get_smollm2

    smol = ROOT / "build" / "models" / "smollm2-135m-instruct"
    get_smollm2([str(smol), "--no-check"])
    plan = plan or [(t, default_n(t), repeat) for t in TASKS]
    load_before = os.getloadavg()
    rows = [compare(smol, task, n, 1, max_new, rep) for task, n, rep in plan]
    return {"model": "SmolLM2-135M-Instruct", "rows": rows, "max_new": max_new,
            "load": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "cmd": "python scripts/bench.py --only exact"}


def _goal(value: float, goal: float, higher: bool = True) -> str:
    met = value >= goal if higher else value <= goal
    return f"{'>=' if higher else '<='} {goal:g} ({'met' if met else 'missed'})"


def render(r: dict) -> list[str]:
    lines = ["## Toward the exact-scoring limit: evalcore vs lm-evaluation-harness 0.4.13", "",
             f"{r['model']}, float32, CPU, 1 torch thread each, batch size 16, offline, same requests, each tool in "
             f"its own process, alternating, medians of {r['rows'][0]['repeat']} runs each (measured "
             f"{r.get('measured', '?')}; load average before {r['load']}, after {r['load_after']}: the 2 cores "
             "were shared with other jobs, so absolute times are inflated and ratios noisy). Generation: at most "
             f"{r['max_new']} new tokens. Ratio = lm-eval / evalcore (higher is better). "
             "Whole process = the benchmark worker process from start to exit (imports, model and tokenizer load, "
             "one warm-up request, all requests) through each tool's Python API (`HFLM`, `HFBackend`), not the "
             "`evalcore eval` / `lm_eval` command lines.", "",
             "| task | docs | scoring evalcore / lm-eval | scoring ratio | whole process evalcore / lm-eval | "
             "whole-process ratio | tokens evalcore / lm-eval / floor | evalcore / floor | agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        s, p, t = x["seconds"], x["process_s"], x["tokens"]
        lines.append(f"| {x['task']} | {x['n']} | {s['ours']:.2f} s / {s['lmeval']:.2f} s | **{x['scoring_ratio']:.2f}x** | "
                     f"{p['ours']:.1f} s / {p['lmeval']:.1f} s | **{x['process_ratio']:.2f}x** | "
                     f"{t['ours']} / {t['lmeval']} / {t['floor']} | {t['ours'] / max(1, t['floor']):.2f}x | "
                     f"{x['agreement']} |")
    lines += ["", "Goals (from the issue; figures to beat, not asserted in tests):", ""]
    by = {x["task"]: x for x in r["rows"]}
    if "mmlu5" in by:
        lines.append(f"- MMLU 5-shot scoring phase: {by['mmlu5']['scoring_ratio']:.2f}x, goal "
                     f"{_goal(by['mmlu5']['scoring_ratio'], GOALS['scoring_mmlu5'])}.")
    for task in ("arc", "hellaswag", "mmlu0", "mmlu5"):
        if task in by:
            lines.append(f"- {task} whole process: {by[task]['process_ratio']:.2f}x, goal "
                         f"{_goal(by[task]['process_ratio'], GOALS['whole_mc'])}.")
    for task in ("gsm8k", "gsm8k_fixed", "gsm8k_cot"):
        if task in by:
            lines.append(f"- {task} generation (scoring phase): {by[task]['scoring_ratio']:.2f}x with "
                         f"{by[task]['agreement']}, goal {_goal(by[task]['scoring_ratio'], GOALS['gen'])}.")
    for x in r["rows"]:
        ratio = x["tokens"]["ours"] / max(1, x["tokens"]["floor"])
        lines.append(f"- {x['task']} tokens: {ratio:.2f}x the floor, goal {_goal(ratio, GOALS['floor'], higher=False)}.")
    lines += ["", "Why goals are missed where they are:", "",
              "- Whole process: with slices this small, what both processes pay before the first request "
              "(importing torch and transformers, loading the model, about 40-80 s each on this loaded machine) "
              "is most of the wall time, so the whole-process ratio stays far below the scoring-phase ratio; it "
              "approaches the scoring-phase ratio as the number of documents grows. The slices were kept small "
              "because the machine was shared.",
              "- Generation: with two prompts in a batch there is little to gain from dropping finished "
              "sequences (the batch shrinks from two to one), and the prompts dominate less than the decoding "
              "steps; the fixed-exemplar prefix is prefilled once per worker instead of once per prompt, which "
              "is where gsm8k_fixed gains its tokens. GSM8K with lm-eval's random exemplars shares almost no prefix.",
              "- Tokens vs floor: our counts include padding (the packed rows of a batch are padded to the "
              "longest); the floor has none. On MMLU 5-shot the shared prefix is most of every row, so the "
              "padding is small next to it; on ARC-Easy and MMLU 0-shot the rows are short and differ in length, "
              "so padding is a large share (packing rows of similar length together, or batches without "
              "padding, would close that gap). For generation the floor leaves out the decoding steps that "
              "produce the stop token.",
              "- The timings are from a 2-core machine shared with other jobs (load averages above): "
              "ratios from one pair to the next moved by up to 2x (the pairs are in the JSON this section is rendered from)."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["ours", "lmeval"])
    ap.add_argument("--build", choices=sorted(LMEVAL_BUILT), help="(internal) write lm-eval's requests to --requests")
    ap.add_argument("--model")
    ap.add_argument("--requests")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.build:
        Path(args.requests).write_text(json.dumps(requests_lmeval(args.build, args.n)))
        return
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        reqs = json.loads(Path(args.requests).read_text())
        got = (worker_ours if args.worker == "ours" else worker_lmeval)(args, reqs)
        print(json.dumps(got))
        return
    sys.path.insert(0, str(ROOT))
    plan = [(t, args.n or default_n(t), args.repeat) for t in args.tasks.split(",")]
    print(json.dumps(run(ROOT / "build" / "bench", plan, args.repeat, args.max_new), indent=1))


if __name__ == "__main__":
    main()
