"""`make crosscheck`, second part: lm-eval's own `arc_easy` task, offline, on a cachekit bundle.

    python scripts/crosscheck_hubcache.py [--limit 40] [--batch-size 8]

Run with the project's interpreter (it needs cachekit and evalcore), after scripts/crosscheck.py,
whose lm-eval 0.4.13 venv (build/lmeval-venv) and tiny model (build/crosscheck/models/tiny) it
reuses (and builds when missing, the same way).

1. Serves ARC-Easy (scripts/crosscheck_hubcache/: test, validation, train placeholder; see its
   README) from the local hub server (scripts/hubserver.py) as the dataset repo `allenai/ai2_arc`,
   with the README `configs` header the hub has.
2. `cachekit prefetch --dataset allenai/ai2_arc` against that server, `cachekit verify`, then
   `cachekit import` into a fresh HF_HOME (build/crosscheck/hubcache/hf-home). The server stops.
3. `lm_eval run --tasks arc_easy --limit N` (lm-eval's own task file: dataset_path
   allenai/ai2_arc, dataset_name ARC-Easy, test split) with HF_HUB_OFFLINE=1,
   HF_DATASETS_OFFLINE=1 and that HF_HOME, on the tiny model, one thread.
4. evalcore on the same rows, read the way evalcore reads them (cachekit's index of the same
   import): the same contexts and continuations, log-likelihoods within 1e-4, the same acc and
   acc_norm per sample. Writes tests/crosscheck/hubcache/arc_easy.jsonl (lm-eval's per-sample
   numbers) and summary.json (commands, environment, bundle, versions, the comparison);
   tests/test_crosscheck_hubcache.py checks them. Exit 1 when the two disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import crosscheck as xc  # noqa: E402  (its venv and tiny model)

DATA = ROOT / "scripts" / "crosscheck_hubcache"
VALIDATION = ROOT / "bundles" / "demo" / "data" / "ai2_arc" / "ARC-Easy" / "validation.jsonl"
WORK = ROOT / "build" / "crosscheck" / "hubcache"
OUT = ROOT / "tests" / "crosscheck" / "hubcache"
REPO, CONFIG = "allenai/ai2_arc", "ARC-Easy"
TOLERANCE = 1e-4
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def log(msg: str) -> None:
    print(f"[crosscheck-hubcache] {msg}", flush=True)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def splits() -> dict[str, list[dict]]:
    """The ARC-Easy splits the local hub serves (see scripts/crosscheck_hubcache/README.md)."""
    validation = _rows(VALIDATION)
    return {"train": validation[:5], "validation": validation, "test": _rows(DATA / "test.jsonl")}


def hub_repo(folder: Path) -> dict[str, Path]:
    """The repo as the hub lays out allenai/ai2_arc: README with configs, Parquet per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    header = ["---", "license: cc-by-sa-4.0", "configs:", f"- config_name: {CONFIG}", "  data_files:"]
    (folder / CONFIG).mkdir(parents=True)
    for split, rows in splits().items():
        name = f"{CONFIG}/{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), folder / name)
        files[name] = folder / name
        header += [f"  - split: {split}", f"    path: {CONFIG}/{split}-*"]
    (folder / "README.md").write_text("\n".join(header + ["---", "# ai2_arc (ARC-Easy)", ""]))
    files["README.md"] = folder / "README.md"
    return files


def cachekit(*args: str, env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "cli.cachekit_cli", *args]
    log("$ cachekit " + " ".join(args))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"cachekit {args[0]} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "CACHEKIT_"))}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **ONE_THREAD, **extra)
    return env


def bundle_and_import(work: Path = WORK) -> tuple[dict, Path]:
    """Steps 1-2: the bundle from the local hub, imported into a fresh HF_HOME under `work`."""
    from scripts.hubserver import HubServer

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bundle, home = work / "bundle", work / "hf-home"
    hub = HubServer().start()
    try:
        commit = hub.commit(REPO, hub_repo(work / "repo"), repo_type="dataset")
        cachekit("prefetch", "--dataset", REPO, "--out", str(bundle),
                 env=clean_env(HF_HOME=str(work / "online-home"), HF_ENDPOINT=hub.url))
    finally:
        hub.stop()
    offline = clean_env(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cachekit("verify", str(bundle), env=offline)
    cachekit("import", str(bundle), env=offline)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(e for e in manifest["entries"] if e["repo_id"] == REPO)
    assert entry["commit"] == commit, (entry["commit"], commit)
    info = {"repo_id": REPO, "config": CONFIG, "commit": commit,
            "splits": entry["splits"][CONFIG],
            "files": {f["path"]: f["sha256"] for f in entry["files"]},
            "commands": [f"cachekit prefetch --dataset {REPO} --out {xc.rel(bundle)}",
                         f"cachekit verify {xc.rel(bundle)}", f"cachekit import {xc.rel(bundle)}"]}
    return info, home


def lmeval_command(limit: int, batch_size: int, out_dir: Path) -> list[str]:
    return [xc.rel(xc.VENV / "bin" / "lm_eval"), "run", "--model", "hf",
            "--model_args", f"pretrained={xc.rel(xc.TINY_DIR)}", "dtype=float32",
            "--device", "cpu", "--batch_size", str(batch_size), "--tasks", "arc_easy",
            "--limit", str(limit), "--log_samples", "--output_path", xc.rel(out_dir)]


def lmeval_env(home: Path) -> dict[str, str]:
    env = clean_env(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                    TRANSFORMERS_OFFLINE="1")
    env.pop("HF_ENDPOINT", None)
    return env


def run_lmeval(home: Path, limit: int, batch_size: int) -> tuple[list[dict], dict, list[str]]:
    """Step 3. Returns lm-eval's per-request rows, its results and the command."""
    out_dir = WORK / "run"
    cmd = lmeval_command(limit, batch_size, out_dir)
    log("$ " + " ".join(cmd))
    t = time.perf_counter()
    with open(WORK / "lm-eval.log", "w") as lf:
        r = subprocess.run(cmd, cwd=ROOT, env=lmeval_env(home), stdout=lf, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = (WORK / "lm-eval.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"lm_eval failed (exit {r.returncode}); log: {xc.rel(WORK / 'lm-eval.log')}\n{tail}")
    log(f"lm-eval done in {time.perf_counter() - t:.1f} s")
    results = json.loads(xc.find_one(str(out_dir / "*" / "results_*.json")).read_text())
    samples = xc.find_one(str(out_dir / "*" / "samples_arc_easy_*.jsonl"))
    rows = []
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        for j in range(len(s["arguments"])):
            a = s["arguments"][f"gen_args_{j}"]
            ll, greedy = s["resps"][j][0]
            rows.append({"doc": s["doc_id"], "id": s["doc"]["id"], "request": j,
                         "n_requests": len(s["arguments"]), "context": a["arg_0"],
                         "continuation": a["arg_1"], "loglikelihood": float(ll),
                         "is_greedy": xc.parse_bool(greedy), "gold": int(s["target"]),
                         **{m: s[m] for m in s["metrics"]}})
    rows.sort(key=lambda r: (r["doc"], r["request"]))
    return rows, results, cmd


def evalcore_rows(home: Path, n: int) -> list[dict]:
    """The first n test rows as evalcore reads them: cachekit's index of the same import
    (the store is $HF_HOME/cachekit when CACHEKIT_HOME is not set, as here)."""
    import pyarrow.parquet as pq

    from cachekit.index import Index

    return pq.read_table(Index(home / "cachekit").resolve_split(REPO, CONFIG, "test")).to_pylist()[:n]


def compare(reference: list[dict], rows: list[dict], model_dir: Path) -> dict:
    """Step 4: evalcore's arc_easy_ppl on `rows` against lm-eval's per-request numbers."""
    from evalcore.backends.base import LoglikRequest, ModelSettings
    from evalcore.backends.hf import HFBackend
    from evalcore.plan.spec import parse_plan
    from evalcore.plan.tasks import build_context, task_for
    from evalcore.scoring import metrics

    task = task_for(parse_plan({"datasets": [{"name": "arc_easy_ppl"}]}).datasets[0])
    by_doc: dict[int, list[dict]] = {}
    for r in reference:
        by_doc.setdefault(r["doc"], []).append(r)
    problems, reqs = [], []
    for i, row in enumerate(rows):
        ref = by_doc.get(i, [])
        ctx = build_context(task, row, [])
        conts = [task.target_delimiter + c for c in task.choices(row)]
        if ref and ref[0]["id"] != row["id"]:
            problems.append(f"doc {i}: lm-eval read row {ref[0]['id']}, evalcore {row['id']}")
        if not ref or ctx != ref[0]["context"] or conts != [r["continuation"] for r in ref]:
            problems.append(f"doc {i}: context or continuations differ")
        if ref and task.target(row) != ref[0]["gold"]:
            problems.append(f"doc {i}: gold differs")
        reqs.append(LoglikRequest(ctx, tuple(conts)))
    if len(by_doc) != len(rows):
        problems.append(f"lm-eval scored {len(by_doc)} docs, evalcore read {len(rows)} rows")
    backend = HFBackend(ModelSettings(path=str(model_dir), batch_size=8, threads=1))
    try:
        results = backend.loglikelihood(reqs)
    finally:
        backend.close()
    worst, acc, acc_norm = 0.0, [], []
    for i, (row, res) in enumerate(zip(rows, results, strict=True)):
        ref = by_doc.get(i, [])
        for r, lp, greedy in zip(ref, res.logprobs, res.greedy, strict=False):
            worst = max(worst, abs(lp - r["loglikelihood"]))
            if greedy != r["is_greedy"]:
                problems.append(f"doc {i} request {r['request']}: greedy flag differs")
        ours = metrics.mc_scores(list(res.logprobs), task.choices(row), task.target(row))
        acc.append(ours["acc"])
        acc_norm.append(ours["acc_norm"])
        if ref and (ours["acc"] != ref[0]["acc"] or ours["acc_norm"] != ref[0]["acc_norm"]):
            problems.append(f"doc {i}: acc/acc_norm differ")
    if worst >= TOLERANCE:
        problems.append(f"log-likelihoods differ by up to {worst:.2e} (tolerance {TOLERANCE})")
    return {"evalcore_task": "arc_easy_ppl", "docs": len(rows), "requests": len(reqs),
            "max_abs_loglikelihood_diff": worst, "tolerance": TOLERANCE,
            "evalcore_metrics": {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm)},
            "problems": problems, "agree": not problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lm-eval's arc_easy, offline, on a cachekit-imported bundle")
    ap.add_argument("--limit", type=int, default=40, help="documents lm-eval scores (default 40, all served)")
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    args = ap.parse_args(argv)
    if not 1 <= args.limit <= len(splits()["test"]):
        raise SystemExit(f"--limit must be 1..{len(splits()['test'])} (the test rows served)")
    xc.ensure_venv()
    xc.ensure_models(["tiny"])
    bundle, home = bundle_and_import()
    reference, results, cmd = run_lmeval(home, args.limit, args.batch_size)
    verdict = compare(reference, evalcore_rows(home, args.limit), xc.TINY_DIR)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "arc_easy.jsonl", "w", encoding="utf-8") as f:
        for r in reference:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    cfg = results["configs"]["arc_easy"]
    summary = {
        "what": "lm-eval's own arc_easy task, offline, on allenai/ai2_arc installed by cachekit import",
        "model": {"path": xc.rel(xc.TINY_DIR), "source": "python scripts/make_tiny_model.py",
                  "model.safetensors_sha256": hashlib.sha256(
                      (xc.TINY_DIR / "model.safetensors").read_bytes()).hexdigest()},
        "bundle": bundle,
        "lmeval": {"command": " ".join(cmd),
                   "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                           "HF_HOME": xc.rel(home), **ONE_THREAD},
                   "task": {k: cfg.get(k) for k in ("task", "dataset_path", "dataset_name", "test_split",
                                                     "doc_to_text", "doc_to_target", "doc_to_choice")},
                   "n_docs": int(results["n-samples"]["arc_easy"]["effective"]),
                   "metrics": xc.metrics_of(results, "arc_easy")},
        "versions": xc.venv_versions(),
        "comparison": verdict,
        "output": "arc_easy.jsonl",
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    log(f"wrote {xc.rel(OUT)}: {len(reference)} requests; lm-eval {summary['lmeval']['metrics']}; "
        f"evalcore {verdict['evalcore_metrics']}; max |dLL| {verdict['max_abs_loglikelihood_diff']:.2e}")
    for p in verdict["problems"]:
        log(f"DISAGREE: {p}")
    return 0 if verdict["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
