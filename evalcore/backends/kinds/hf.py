"""The Hugging Face transformers backend (evalcore/backends/hf/): a checkpoint from the cache or a
local folder, scored as lm-evaluation-harness scores it."""

from __future__ import annotations

from types import MappingProxyType

from evalcore.backends.registry import BackendKind

KIND = BackendKind(
    name="hf",
    summary="transformers causal LM (lm-eval HFLM semantics)",
    load="evalcore.backends.hf:load",
    options=MappingProxyType({"packed": bool, "token_budget": int}),
    libraries=("torch", "transformers", "tokenizers", "accelerate"),
)
