"""`make demo`: the main job on the embedded default inputs, end to end, offline.

The evaluator (evalcore eval) is not built yet, so for now the demo shows the cachekit round
trip: a tiny real model and ARC-Easy are bundled from local folders into one .tar, verified,
imported into a fresh Hugging Face home, and loaded by repo id with the network switched off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "demo"
BIN = Path(sys.executable).parent


def step(title: str, *cmd: str, env: dict | None = None) -> None:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    t = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    print(f"   ({time.time() - t:.1f} s)", flush=True)


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    model = WORK / "tiny-llama"
    bundle = WORK / "demo-bundle.tar"
    online = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    online["HF_HOME"] = str(WORK / "online-hf-home")
    offline = dict(online, HF_HOME=str(WORK / "offline-hf-home"), HF_HUB_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    print("cachekit demo: the evaluator is not built yet; this runs the bundle round trip "
          "(prefetch -> .tar -> verify -> import -> offline load).")
    step("build a tiny real model (2-layer Llama, SmolLM2 tokenizer)",
         sys.executable, "scripts/make_tiny_model.py", str(model))
    step("prefetch: bundle the model and ARC-Easy from local folders into one .tar",
         str(BIN / "cachekit"), "prefetch", "--local", f"demo/tiny-llama={model}",
         "--local", "dataset:allenai/ai2_arc=bundles/demo/data/ai2_arc", "--out", str(bundle), env=online)
    step("verify the bundle (sha256 of every file)", str(BIN / "cachekit"), "verify", str(bundle), env=offline)
    step("import into a fresh, offline Hugging Face home", str(BIN / "cachekit"), "import", str(bundle), env=offline)
    step("list what is installed", str(BIN / "cachekit"), "ls", env=offline)
    check = (
        "import torch, pyarrow.parquet as pq\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from cachekit.index import Index\n"
        "tok = AutoTokenizer.from_pretrained('demo/tiny-llama')\n"
        "model = AutoModelForCausalLM.from_pretrained('demo/tiny-llama')\n"
        "ids = tok('Question: Which is a mammal?\\nAnswer:', return_tensors='pt').input_ids\n"
        "with torch.no_grad(): logits = model(ids).logits\n"
        "path = Index().resolve_split('allenai/ai2_arc', 'ARC-Easy', 'validation')\n"
        "rows = pq.read_table(path).to_pylist()\n"
        "print(f'model demo/tiny-llama loaded offline by repo id: logits {tuple(logits.shape)}')\n"
        "print(f'dataset allenai/ai2_arc ARC-Easy/validation: {len(rows)} rows, first: {rows[0][\"question\"][:60]!r}')\n"
    )
    step("load both by repo id with HF_HUB_OFFLINE=1", sys.executable, "-c", check, env=offline)
    print("\ndemo done: the bundle round trip works offline.")


if __name__ == "__main__":
    main()
