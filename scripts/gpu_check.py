"""The HF backend on an accelerator: agreement with a per-request reference and tokens per second.

    python scripts/gpu_check.py                      # CUDA if visible (about 1B model), else CPU (small)
    python scripts/gpu_check.py --device cpu --size small --requests 12 --json out.json

Needs torch and transformers only, and no network: the model is a Llama-style causal LM with
random weights built here (weights matter neither for speed nor for agreement), saved to a
temporary folder with the repository's demo tokenizer (bundles/demo/tokenizer) and loaded by the
HF backend as any checkpoint. For each dtype (bfloat16 and float32 on CUDA, float32 on CPU), with
batch size "auto", it scores MMLU-style 5-shot questions (the repository's MMLU slice) through
  - prefix: packing plus the shared-prefix KV cache (the default),
  - packed: shared-context packing only,
  - plain: lm-eval's batched per-pair path,
and a reference in lm-eval's semantics: plain transformers, one (context, continuation) at a time,
no padding. It prints and writes max |log-likelihood difference| to the reference, tokens per
second (the reference's tokens, (context + continuation)[:-1] of every pair, over the wall time,
so every path is measured on the same work) and the speed-up over the reference, plus greedy
generation (refill loop vs `generate`, identical tokens required). Sized to finish in well under
8 minutes on one recent GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOKENIZER = ROOT / "bundles" / "demo" / "tokenizer"
MMLU = ROOT / "scripts" / "crosscheck_tasks" / "data" / "mmlu"
SIZES = {   # name -> LlamaConfig fields; "1b" is about 1.0e9 parameters with the 49152-token vocabulary
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=32,
               num_key_value_heads=4),
    "small": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
}


def build_model(out: Path, size: str, device: str) -> int:
    """A random-weight Llama of `size`, saved (float32) with the demo tokenizer; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=2048, bos_token_id=0, eos_token_id=0,
                         tie_word_embeddings=True, rope_theta=10000.0, **SIZES[size])
    with torch.device(device):
        model = LlamaForCausalLM(config).eval()
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    del model
    return n


def mmlu_requests(n: int):
    """MMLU 5-shot in lm-eval's format, subject after subject: the five first questions of each
    subject in front of its other questions."""
    from evalcore.backends import LoglikRequest

    def question(r: dict, answer: bool) -> str:
        text = r["question"].strip() + "\n" + "".join(f"{k}. {c}\n" for k, c in zip("ABCD", r["choices"], strict=True))
        return text + "Answer:" + (f" {'ABCD'[r['answer']]}\n\n" if answer else "")

    subjects = sorted(p.name for p in MMLU.iterdir())
    per = max(1, -(-n // len(subjects)))
    out = []
    for s in subjects:
        rows = [json.loads(x) for x in (MMLU / s / "test.jsonl").read_text().splitlines() if x.strip()]
        head = (f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n"
                + "".join(question(r, True) for r in rows[:5]))
        out += [LoglikRequest(head + question(r, False), (" A", " B", " C", " D")) for r in rows[5:5 + per]]
    return out[:n]


def reference(backend, requests) -> tuple[list[list[float]], int, float]:
    """lm-eval's semantics with plain transformers, one pair at a time: the log-likelihoods, the
    tokens run, the seconds."""
    import torch

    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)
    out, tokens = [], 0
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for req in requests:
            row = []
            for cont_text in req.continuations:
                ctx, cont = backend.encode_pair(req.context, cont_text)
                ids = (ctx + cont)[-(backend.max_length + 1):][:-1]
                tokens += len(ids)
                logits = backend.model(input_ids=torch.tensor([ids], device=backend.device)).logits[0]
                logp = torch.log_softmax(logits[len(ids) - len(cont):].float(), dim=-1)
                row.append(float(logp.gather(1, torch.tensor(cont, device=logp.device)[:, None]).sum()))
            out.append(row)
    sync()
    return out, tokens, time.perf_counter() - start


def timed(backend, fn):
    import torch

    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def check_dtype(model_dir: Path, device: str, dtype: str, requests, gen_prompts, threads: int | None) -> dict:
    from evalcore.backends import GenRequest, ModelSettings
    from evalcore.backends.hf import HFBackend

    settings = ModelSettings(path=str(model_dir), dtype=dtype, device=device, batch_size="auto", threads=threads)
    row: dict = {"dtype": dtype}
    with HFBackend(settings, packed=False) as base:
        base.loglikelihood(requests[:1])                      # warm-up
        ref, ref_tokens, ref_s = reference(base, requests)
    row["reference"] = {"seconds": round(ref_s, 3), "tokens": ref_tokens, "tokens_per_s": round(ref_tokens / ref_s, 1)}
    for name, opts in (("prefix", {}), ("packed", {"prefix_reuse": False}), ("plain", {"packed": False})):
        with HFBackend(settings, **opts) as b:
            b.loglikelihood(requests[:2])                     # warm-up: probes, kernels
            b.tokens_run = 0
            b._prefixes.clear()
            got, seconds = timed(b, lambda b=b: b.loglikelihood(requests))
            diff = max(abs(x - y) for r, want in zip(got, ref, strict=True) for x, y in zip(r.logprobs, want, strict=True))
            row[name] = {"seconds": round(seconds, 3), "max_abs_ll_diff": diff, "tokens_run": b.tokens_run,
                         "tokens_per_s": round(ref_tokens / seconds, 1), "speedup_vs_reference": round(ref_s / seconds, 2),
                         "paths": b.fast_paths()}
    gens = [GenRequest(p, 32) for p in gen_prompts]
    with HFBackend(settings) as b:
        b.generate(gens[:1])
        refill, refill_s = timed(b, lambda: b.generate(gens))
        mode = b.fast_paths()["generation"]
        b._gen_mode = "generate"
        plain, plain_s = timed(b, lambda: b.generate(gens))
    row["generation"] = {"mode": mode, "identical": refill == plain, "refill_s": round(refill_s, 3),
                         "generate_s": round(plain_s, 3), "speedup": round(plain_s / refill_s, 2)}
    return row


def table(result: dict) -> list[str]:
    """The results as a markdown table (also used by docs/benchmarks.md)."""
    lines = [f"{result['device']}, {result['size']} model ({result['parameters'] / 1e9:.2f}e9 parameters, random "
             f"weights), {result['requests']} MMLU 5-shot questions, batch size auto, {result['seconds']} s in all "
             f"({result['date']}; torch {result['torch']}, transformers {result['transformers']}).", "",
             "| dtype | path | max abs ll diff to the reference | tokens/s | vs reference |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        ref = row["reference"]
        lines.append(f"| {row['dtype']} | reference (plain transformers, one pair at a time) | 0 | "
                     f"{ref['tokens_per_s']} | 1.00x |")
        for name in ("prefix", "packed", "plain"):
            r = row[name]
            lines.append(f"| {row['dtype']} | {name} | {r['max_abs_ll_diff']:.2e} | {r['tokens_per_s']} | "
                         f"{r['speedup_vs_reference']:.2f}x |")
        g = row["generation"]
        lines.append(f"| {row['dtype']} | generation, {g['mode']} vs `generate` (same batch size) | identical: "
                     f"{g['identical']} | - | {g['speedup']:.2f}x |")
    return lines


def render(result: dict) -> list[str]:
    """The docs/benchmarks.md section: the GPU row, and the run this section measured."""
    on_gpu = result["device"] != "cpu"
    lines = ["## HF backend on an accelerator (scripts/gpu_check.py)", "",
             "| device | dtype | result |", "|---|---|---|"]
    if on_gpu:
        lines.append(f"| {result['device']} | bf16, float32 | measured {result['date']}: see below |")
    else:
        lines.append("| CUDA GPU | bf16, float32 | not measured (no accelerator in this session) |")
    lines += ["", ("Measured on the accelerator:" if on_gpu else
                   "The same script on this machine's CPU (small model, float32), as `make bench` runs it:"), ""]
    lines += table(result)
    lines += ["", "Reproduce: `python scripts/gpu_check.py` (CUDA when visible: a ~1B Llama, bf16 and float32; "
              "under 8 minutes on one GPU; no network needed)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 1b on CUDA, small on CPU")
    ap.add_argument("--requests", type=int, default=None, help="MMLU questions (default 120 on CUDA, 12 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import torch
    import transformers

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("1b" if device == "cuda" else "small")
    n = args.requests or (120 if device == "cuda" else 12)
    dtypes = ("bfloat16", "float32") if device == "cuda" else ("float32",)
    started = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch": torch.__version__, "transformers": transformers.__version__, "size": size,
                    "requests": n, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    requests = mmlu_requests(n)
    gen_prompts = [r.context for r in requests[: min(16, n)]]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result["parameters"] = build_model(Path(tmp), size, device)
        for dtype in dtypes:
            row = check_dtype(Path(tmp), device, dtype, requests, gen_prompts, args.threads)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
