"""The Hugging Face backend: a causal LM from `transformers` behind the evalcore `Backend`
protocol, assembled from one module per job (see the package docstring).
"""

from __future__ import annotations

import gc
from typing import Any

import torch

from evalcore.backends.base import ModelSettings
from evalcore.backends.hf.batching import CPU_TOKEN_BUDGET, Batching
from evalcore.backends.hf.generation import Generation
from evalcore.backends.hf.identity import Identity
from evalcore.backends.hf.loading import Loading, _coerce, _Source
from evalcore.backends.hf.probes import Probes
from evalcore.backends.hf.scoring import Scoring
from evalcore.backends.hf.tokens import Tokens
from evalcore.backends.prefix import PrefixStore
from evalcore.errors import BackendError


class HFBackend(Loading, Tokens, Scoring, Probes, Batching, Generation, Identity):
    """A `transformers` causal LM behind the evalcore `Backend` protocol.

    `packed` (default True) enables the shared-context fast path for multiple-choice requests;
    `prefix_reuse` (default True) computes token prefixes shared across requests once and reuses
    their KV cache (evalcore/backends/prefix.py), for scoring and for the prefill of generation;
    `token_budget` caps the padded tokens per packed forward pass (default 256 on CPU, no cap on
    GPU, where the batch size limits rows instead).
    """

    def __init__(self, settings: ModelSettings, *, packed: bool = True, prefix_reuse: bool = True,
                 token_budget: int | None = None) -> None:
        self.settings = settings
        self.packed = packed
        self.prefix_reuse = prefix_reuse
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self._model_kwargs = {k: _coerce(v) for k, v in settings.model_kwargs.items()}
        self._tokenizer_kwargs = {k: _coerce(v) for k, v in settings.tokenizer_kwargs.items()}
        self._cache_dir = self._model_kwargs.get("cache_dir")
        self._trust = settings.trust_remote_code  # read once, by ModelSettings (kwargs included)
        self._model_src = _Source.resolve(settings.path, settings.revision, "model")
        self._tok_src = (_Source.resolve(settings.tokenizer_path, settings.tokenizer_revision, "tokenizer")
                         if settings.tokenizer_path else self._model_src)
        self.tokenizer = self._load_tokenizer()
        self.model = self._load_model()
        self.device = self.model.get_input_embeddings().weight.device
        self._on_cuda = self.device.type == "cuda"
        self.max_length = settings.max_seq_len or self._resolve_max_length()
        self._rows = self._initial_rows()
        self._token_budget = token_budget if token_budget is not None else (
            None if self._on_cuda else CPU_TOKEN_BUDGET)
        if not settings.batch_padding:
            self._rows, self._token_budget = 1, None
        self._pack_mode: str | None = None       # "hidden" | "logits" | "off", decided by a probe
        self.packed_fallback_reason: str | None = None
        self._prefix_mode: str | None = None     # "on" | "off", decided by a probe
        self.prefix_fallback_reason: str | None = None
        self._prefixes = PrefixStore()
        self._gen_mode: str | None = None        # "refill" | "generate", decided by a probe
        self.gen_fallback_reason: str | None = None
        self._gen_prefix: str | None = None      # "on" | "off": prefix reuse in the prefill
        self.gen_prefix_fallback_reason: str | None = None
        self.tokens_run = 0                      # real (non-padding) tokens run through the model
        self.positions_run = 0                   # positions run through the model, padding included
        self._identity: dict[str, Any] | None = None
        self._logits_to_keep: bool | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("this backend was closed", hint="load the model again")

    def close(self) -> None:
        """Drop the model and tokenizer and free their memory."""
        if self._closed:
            return
        self._closed = True
        self.model = None
        self.tokenizer = None
        gc.collect()
        if self._on_cuda:
            torch.cuda.empty_cache()

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
