"""The Hugging Face backend: a causal LM from `transformers`, scored exactly as
lm-evaluation-harness 0.4.13 `HFLM` scores it, and answered greedily.

This package (with genbatch.py and prefix.py) is the only evalcore code that imports torch and
transformers; it is imported only when a model is loaded (`evalcore.backends.load_backend`,
through the `hf` entry of evalcore/backends/kinds/).

Log-likelihood semantics (lm-eval 0.4.13 `TemplateLM.loglikelihood`, `HFLM._loglikelihood_tokens`):
trailing whitespace of the context moves to the continuation; the continuation's token ids are
`encode(context + continuation)[len(encode(context)):]`; an empty context becomes the tokenizer's
BOS (else EOS) token; the model input is `(context + continuation)[-(max_length + 1):][:-1]`;
the score is the sum of the continuation tokens' log-softmax, and `greedy` says whether every
continuation token is the argmax.

The fast path packs all continuations that share a context into one row,
`context | cont1[:-1] | cont2[:-1] | ...`, with a 4D attention mask (a token sees the context and
the earlier tokens of its own continuation; padding sees only itself) and position ids that
restart after the context for every continuation. The LM head and the float32 log-softmax run
only at the positions that predict continuation tokens. A probe on first use checks, per model,
that this gives the plain per-pair numbers; where it does not (attention implementations or
architectures that ignore a custom 4D mask or position ids) scoring falls back to the plain path.

One module per job: `loading` (sources, tokenizer, model, hub-error mapping), `tokens` (lm-eval
tokenization), `scoring` (packed and plain log-likelihoods), `probes` (the fast-path checks),
`batching` (batches and out-of-memory back-off), `generation`, `identity`; `backend` assembles
`HFBackend` from them.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM  # noqa: F401 - where tests replace from_pretrained

from evalcore.backends.base import ModelSettings
from evalcore.backends.hf.backend import HFBackend
from evalcore.backends.hf.generation import cut_at_stops
from evalcore.backends.hf.loading import _Source
from evalcore.backends.hf.tokens import _Pair


def load(settings: ModelSettings, **options: Any) -> HFBackend:
    """The `hf` backend's loader (evalcore/backends/kinds/hf.py): the plan's backend_options,
    then `options` (HFBackend keywords: packed, prefix_reuse, token_budget)."""
    return HFBackend(settings, **{**dict(settings.backend_options), **options})


__all__ = ["HFBackend", "ModelSettings", "cut_at_stops", "load", "_Pair", "_Source"]
