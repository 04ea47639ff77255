"""Build a tiny but real causal LM: a 2-layer Llama with the SmolLM2 tokenizer, fixed seed.

    python scripts/make_tiny_model.py OUT_DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parent.parent / "bundles" / "demo" / "tokenizer"


def build_tiny_model(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=True, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out


if __name__ == "__main__":
    build_tiny_model(Path(sys.argv[1]))
