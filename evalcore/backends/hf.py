"""The Hugging Face backend: a causal LM from `transformers`, scored exactly as
lm-evaluation-harness 0.4.13 `HFLM` scores it, and answered greedily.

This is the only evalcore module that imports torch and transformers; it is imported only when a
model is loaded (`evalcore.backends.load_backend`).

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
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import BackendError, ModelNotCachedError
from .base import (
    GenRequest,
    LoglikRequest,
    LoglikResult,
    ModelSettings,
    prefetch_hint,
)
from .genbatch import GreedyRefill, Job, needs_generate
from .prefix import PrefixStore, cache_kwarg, compute_prefix, expanded_cache, plan_prefixes

DEFAULT_MAX_LENGTH = 2048          # lm-eval's default when neither config nor tokenizer says
TOKENIZER_INFINITY = 1000000000000000019884624838656
CPU_TOKEN_BUDGET = 256             # padded tokens per packed forward pass; fastest measured on CPU
CPU_AUTO_BATCH = 8                 # "auto" batch size on CPU
GPU_AUTO_BATCH = 64                # "auto" start on GPU (lm-eval's max_batch_size), halved on OOM
PACKED_ATTENTION = MappingProxyType({"sdpa": "bool", "eager": "float"})  # implementation -> mask kind
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")
DTYPES = MappingProxyType({
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
})
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
TOKENIZER_ATTRS = ("padding_side", "truncation_side")   # set on the tokenizer, not passed to it
NON_SEMANTIC_KWARGS = frozenset({"cache_dir", "device_map", "local_files_only", "low_cpu_mem_usage",
                                 "max_memory", "offload_folder", "offload_state_dict", "force_download",
                                 "token", "revision"})
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BOOL_WORDS = MappingProxyType({"true": True, "false": False})


# ----------------------------------------------------------------------------------------------
# Small helpers


def _offline() -> bool:
    """Whether the Hugging Face libraries were told to stay offline (read from the environment)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _coerce(value: Any) -> Any:
    """`--model-kwargs k=v` may hand over 'True'/'False' as strings; make those booleans."""
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    return value


def _sha256_bytes(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _semantic(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs that can change results, JSON-normalised (device placement and paths dropped)."""
    return json.loads(_canonical({k: v for k, v in kwargs.items() if k not in NON_SEMANTIC_KWARGS}))


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain


def _cuda_oom() -> type[BaseException]:
    return getattr(torch.cuda, "OutOfMemoryError", RuntimeError)


@dataclass(frozen=True)
class _Source:
    """Where a model or tokenizer comes from: a local folder, or a hub repo id (+ revision)."""

    name: str
    revision: str | None
    local: bool

    @classmethod
    def resolve(cls, name: str, revision: str | None, what: str) -> _Source:
        expanded = os.path.expanduser(name)
        if os.path.isdir(expanded):
            return cls(str(Path(expanded).resolve()), revision, True)
        looks_like_path = (name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1
                           or os.sep in name.replace("/", "") or not _REPO_ID.match(name))
        if looks_like_path:
            raise BackendError(f"{what} folder not found: {name}",
                               hint="give an existing folder, or a hub repo id such as ORG/NAME")
        return cls(name, revision, False)

    def snapshot_folder(self, cache_dir: str | None) -> Path | None:
        """The folder the files were read from: the local folder, or the hub cache snapshot."""
        if self.local:
            return Path(self.name)
        from huggingface_hub import try_to_load_from_cache

        for probe in ("config.json", "tokenizer_config.json", "tokenizer.json"):
            found = try_to_load_from_cache(self.name, probe, cache_dir=cache_dir, revision=self.revision)
            if isinstance(found, str):
                return Path(found).parent
        return None


def _load_error(exc: BaseException, source: _Source, what: str) -> BackendError:
    """Turn a transformers / huggingface_hub loading failure into a BackendError with a hint."""
    from huggingface_hub import errors as hub_errors

    chain = _exception_chain(exc)
    rev = f" at revision {source.revision}" if source.revision else ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if source.local:
        return BackendError(f"cannot load {what} from {source.name}: {detail}",
                            hint="the folder must hold a transformers checkpoint (config.json, weights, tokenizer files)")
    if any(isinstance(e, hub_errors.RevisionNotFoundError) for e in chain):
        return ModelNotCachedError(f"{what} {source.name}: revision {source.revision} not found",
                                   hint=prefetch_hint(source.name))
    missing = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled,
               hub_errors.RepositoryNotFoundError, hub_errors.EntryNotFoundError)
    not_cached = any(isinstance(e, missing) for e in chain) or (
        isinstance(exc, OSError) and re.search(r"couldn't connect|not a valid model identifier|"
                                               r"cached files|does not appear to have", str(exc)))
    if not_cached:
        mode = "offline (HF_HUB_OFFLINE=1)" if _offline() else "and could not be downloaded"
        return ModelNotCachedError(
            f"{what} {source.name}{rev} is not in the local Hugging Face cache, {mode}",
            hint=prefetch_hint(source.name))
    return BackendError(f"cannot load {what} {source.name}{rev}: {detail}")


# ----------------------------------------------------------------------------------------------
# Token-level work items


@dataclass(frozen=True)
class _Pair:
    """One (context, continuation) to score, as token ids; `key` indexes the result."""

    key: tuple[int, int]
    ctx: tuple[int, ...]
    cont: tuple[int, ...]
    merged: bool            # encode(context + continuation) does not start with encode(context)


@dataclass(frozen=True)
class _Row:
    """A packed row: one context followed by several continuations (each without its last token)."""

    ctx: tuple[int, ...]
    pairs: tuple[_Pair, ...]

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(p.cont) - 1 for p in self.pairs)


class _StopOnStrings(transformers.StoppingCriteria):
    """Marks a row done once its generated text contains one of its stop strings."""

    def __init__(self, tokenizer: Any, stops: Sequence[Sequence[str]], start: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [tuple(s for s in row if s) for row in stops]
        self.start = start
        self.done = [False] * len(self.stops)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids[:, self.start:].tolist()
        for i, (ids, stops) in enumerate(zip(generated, self.stops, strict=True)):
            if not self.done[i] and stops:
                text = self.tokenizer.decode(ids, skip_special_tokens=False)
                self.done[i] = any(s in text for s in stops)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """lm-eval's `postprocess_generated_text`: split at each stop string in turn, keep the head."""
    for term in stops:
        if term:
            text = text.split(term)[0]
    return text


# ----------------------------------------------------------------------------------------------
# The backend


class HFBackend:
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
        self._trust = bool(self._model_kwargs.pop("trust_remote_code", settings.trust_remote_code))
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

    # -- loading --------------------------------------------------------------------------------

    def _load_tokenizer(self) -> Any:
        kwargs = dict(self._tokenizer_kwargs)
        attrs = {k: kwargs.pop(k) for k in TOKENIZER_ATTRS if k in kwargs}
        if "truncation" in kwargs and isinstance(kwargs["truncation"], str):
            attrs.setdefault("truncation_side", kwargs.pop("truncation"))   # OpenCompass style
        kwargs.setdefault("trust_remote_code", self._trust)
        if self._tok_src.revision and not self._tok_src.local:
            kwargs["revision"] = self._tok_src.revision
        if not self._tok_src.local and _offline():
            kwargs["local_files_only"] = True
        if self._cache_dir and not self._tok_src.local:
            kwargs.setdefault("cache_dir", self._cache_dir)
        self._add_bos = kwargs.get("add_bos_token")
        try:
            tok = AutoTokenizer.from_pretrained(self._tok_src.name, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every loading failure becomes one clear error
            what = "tokenizer" if self.settings.tokenizer_path else "model"
            raise _load_error(exc, self._tok_src, what) from exc
        for k, v in attrs.items():
            setattr(tok, k, v)
        # lm-eval's configure_pad_token, without adding tokens to the vocabulary
        if tok.pad_token_id is None:
            for name in ("unk_token_id", "eos_token_id", "bos_token_id"):
                if getattr(tok, name, None) is not None:
                    tok.pad_token_id = getattr(tok, name)
                    break
        return tok

    def _load_model(self) -> Any:
        s = self.settings
        kwargs = dict(self._model_kwargs)
        if "torch_dtype" in kwargs:
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        dtype = kwargs.pop("dtype", s.dtype)
        if isinstance(dtype, str) and dtype != "auto":
            if dtype.lower() not in DTYPES:
                raise BackendError(f"unknown dtype {dtype!r}",
                                   hint=f"use one of auto, {', '.join(sorted(DTYPES))}")
            dtype = DTYPES[dtype.lower()]
        device_map = kwargs.pop("device_map", s.device_map)
        if not self._model_src.local:
            if self._model_src.revision:
                kwargs["revision"] = self._model_src.revision
            if _offline():
                kwargs["local_files_only"] = True
        if s.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {s.device!r} requested but no CUDA GPU is visible",
                               hint="check CUDA_VISIBLE_DEVICES and the GPU driver (nvidia-smi)")
        if kwargs.get("max_memory") == "leased":  # exactly the GPUs this worker sees, no CPU/disk offload
            kwargs["max_memory"] = {i: torch.cuda.mem_get_info(i)[1] for i in range(torch.cuda.device_count())}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self._model_src.name, dtype=dtype, trust_remote_code=self._trust,
                **({"device_map": device_map} if device_map is not None else {}), **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _load_error(exc, self._model_src, "model") from exc
        if device_map is None:
            model = model.to(s.device)
        model.eval()
        return model

    def _resolve_max_length(self) -> int:
        """lm-eval's resolve_max_length: text config, config, tokenizer, then 2048."""
        config = self.model.config
        cfg = getattr(config, "text_config", None) or config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        mml = getattr(self.tokenizer, "model_max_length", None)
        if mml is not None and mml != TOKENIZER_INFINITY:
            return int(mml)
        return DEFAULT_MAX_LENGTH

    def _initial_rows(self) -> int:
        bs = self.settings.batch_size
        if bs == "auto":
            return GPU_AUTO_BATCH if self._on_cuda else CPU_AUTO_BATCH
        return int(bs)

    # -- tokenization (lm-eval semantics) -------------------------------------------------------

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes: BOS, else EOS (lm-eval's prefix_token_id)."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """lm-eval's HFLM.tok_encode: the tokenizer's own special-token default unless told."""
        kwargs: dict[str, bool] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self._add_bos is not None:
            kwargs["add_special_tokens"] = bool(self._add_bos)
        if add_special_tokens is None and self.prefix_token_id is not None:
            prefix = self.tokenizer.decode(self.prefix_token_id)
            if prefix and text.startswith(prefix):
                kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation token ids exactly as lm-eval 0.4.13 builds them."""
        ctx, cont, _ = self._encode_pair(context, continuation)
        return ctx, cont

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int], bool]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:], False
            return [self.prefix_token_id], cont, False
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):], whole[:len(ctx)] != ctx

    # -- log-likelihood -------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[LoglikResult]:
        """Score every continuation of every request; results in request order."""
        self._check_open()
        scores: dict[tuple[int, int], tuple[float, bool, int]] = {}
        pairs: list[_Pair] = []
        for i, req in enumerate(requests):
            for j, continuation in enumerate(req.continuations):
                ctx, cont, merged = self._encode_pair(req.context, continuation)
                if not cont:
                    scores[(i, j)] = (0.0, True, 0)      # nothing to score: log 1
                    continue
                if len(cont) > self.max_length:
                    raise BackendError(f"continuation of request {i} has {len(cont)} tokens, more than "
                                       f"the model's maximum length {self.max_length}")
                pairs.append(_Pair((i, j), tuple(ctx), tuple(cont), merged))
        plain = pairs
        if self.packed and pairs and self._packing_available():
            rows, plain = self._plan_rows(pairs, keep_single=self._prefix_available())
            plain = plain + self._score_rows(rows, scores)
        self._score_plain(plain, scores)
        out = []
        for i, req in enumerate(requests):
            cols = [scores[(i, j)] for j in range(len(req.continuations))]
            out.append(LoglikResult(tuple(float(c[0]) for c in cols), tuple(bool(c[1]) for c in cols),
                                    tuple(int(c[2]) for c in cols)))
        return out

    def _fits_unpacked(self, pair: _Pair) -> bool:
        return len(pair.ctx) + len(pair.cont) <= self.max_length + 1

    def _row_cap(self) -> int:
        cap = self.max_length
        window = getattr(self.model.config, "sliding_window", None)
        if isinstance(window, int) and window > 0 and getattr(self.model.config, "use_sliding_window", True):
            cap = min(cap, window)
        return cap

    def _plan_rows(self, pairs: list[_Pair], keep_single: bool = False) -> tuple[list[_Row], list[_Pair]]:
        """Group pairs by context ids into packed rows; the rest goes to the plain path (contexts
        with one continuation too, unless `keep_single`: they may share a prefix with others)."""
        cap = self._row_cap()
        groups: dict[tuple[int, ...], list[_Pair]] = {}
        plain: list[_Pair] = []
        for p in pairs:
            if p.merged or not self._fits_unpacked(p) or len(p.ctx) + len(p.cont) - 1 > cap:
                plain.append(p)          # merged across the boundary, truncated, or too long
            else:
                groups.setdefault(p.ctx, []).append(p)
        rows: list[_Row] = []
        for ctx, members in groups.items():
            if len(members) < 2 and not keep_single:
                plain.extend(members)
                continue
            chunk: list[_Pair] = []
            length = len(ctx)
            for p in members:
                if chunk and length + len(p.cont) - 1 > cap:
                    rows.append(_Row(ctx, tuple(chunk)))
                    chunk, length = [], len(ctx)
                chunk.append(p)
                length += len(p.cont) - 1
            rows.append(_Row(ctx, tuple(chunk)))
        return rows, plain

    def _score_rows(self, rows: list[_Row], scores: dict) -> list[_Pair]:
        """Score packed rows; rows that share a context prefix with others (or with a prefix this
        worker already computed) run after its cached KV. Returns the pairs left to the plain
        path: single-continuation rows that share no prefix."""
        groups: dict[tuple[int, ...], list[_Row]] = {(): []}
        if self._prefix_available():
            plan = plan_prefixes([r.ctx for r in rows], known=self._prefixes.keys())
            for i, r in enumerate(rows):
                groups.setdefault(plan.get(i, ()), []).append(r)
        else:
            groups[()] = list(rows)
        plain = [p for r in groups[()] if len(r.pairs) == 1 for p in r.pairs]
        groups[()] = [r for r in groups[()] if len(r.pairs) > 1]
        for prefix, members in sorted(groups.items(), key=lambda kv: kv[0]):
            if not members:
                continue
            kv, skip = (self._prefix_kv(prefix) if prefix else None), len(prefix)
            members.sort(key=lambda r: (-r.length, r.ctx))
            self._run_batches(members, [r.length - skip for r in members],
                              lambda batch, kv=kv, n=skip: self._forward_rows(batch, scores, kv, n),
                              use_budget=True)
        return plain

    def _prefix_kv(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        kv = self._prefixes.get(prefix)
        if kv is None:
            kv = compute_prefix(self.model, prefix, self.device, hidden=self._pack_mode != "logits")
            self.tokens_run += len(prefix)
            self.positions_run += len(prefix)
            self._prefixes.put(prefix, kv)
        return kv

    def _packed_inputs(self, rows: Sequence[_Row], skip: int = 0) -> tuple[torch.Tensor, ...]:
        """input ids, 4D mask, position ids and the gather plan for a batch of packed rows; with
        `skip`, the first `skip` context tokens (a shared prefix) are in the KV cache already: the
        ids start after them, positions count from them, and every row's mask sees them."""
        if skip:
            rows = [_Row(r.ctx[skip:], tuple(_Pair(p.key, p.ctx[skip:], p.cont, p.merged) for p in r.pairs))
                    for r in rows]
        T = max(r.length for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        seg = torch.full((len(rows), T), -1, dtype=torch.long)
        pos = torch.zeros((len(rows), T), dtype=torch.long)
        b_idx: list[int] = []
        t_idx: list[int] = []
        targets: list[int] = []
        for b, row in enumerate(rows):
            C = len(row.ctx)
            ids[b, :C] = torch.tensor(row.ctx)
            seg[b, :C] = 0
            pos[b, :C] = torch.arange(skip, skip + C)
            off = C
            for j, p in enumerate(row.pairs, start=1):
                n = len(p.cont) - 1
                if n:
                    ids[b, off:off + n] = torch.tensor(p.cont[:-1])
                    seg[b, off:off + n] = j
                    pos[b, off:off + n] = torch.arange(skip + C, skip + C + n)
                b_idx.extend([b] * (n + 1))
                t_idx.append(C - 1)
                t_idx.extend(range(off, off + n))
                targets.extend(p.cont)
                off += n
        ar = torch.arange(T)
        causal = ar[None, :] <= ar[:, None]                              # [q, k]
        sq, sk = seg[:, :, None], seg[:, None, :]
        allowed = causal[None] & (sk >= 0) & ((sk == 0) | (sk == sq))     # [B, q, k]
        allowed = torch.where(sq < 0, torch.eye(T, dtype=torch.bool)[None], allowed)
        if skip:                                                         # the cached prefix
            allowed = torch.cat([torch.ones((len(rows), T, skip), dtype=torch.bool), allowed], dim=-1)
        self.tokens_run += int((seg >= 0).sum())
        self.positions_run += int(ids.numel())
        mask = allowed[:, None]                                          # [B, 1, q, k]
        if PACKED_ATTENTION.get(self._attn_impl()) == "float":
            dtype = self.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
        return (ids.to(self.device), mask.to(self.device), pos.to(self.device),
                torch.tensor(b_idx), torch.tensor(t_idx), torch.tensor(targets))

    def _packed_logits(self, rows: Sequence[_Row], mode: str, kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                       skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits at every position that predicts a continuation token, and the targets;
        `kv` holds the key/value states of the rows' first `skip` context tokens."""
        ids, mask, pos, b_idx, t_idx, targets = self._packed_inputs(rows, skip)
        cache: dict[str, Any] = {"use_cache": False}
        if kv is not None:
            fn = self.model.base_model if mode == "hidden" else self.model
            cache = {cache_kwarg(fn.forward): expanded_cache(kv, len(rows)), "use_cache": True}
        with torch.inference_mode():
            if mode == "hidden":
                hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                               **cache).last_hidden_state
                picked = hidden[b_idx.to(hidden.device), t_idx.to(hidden.device)]
                logits = self.model.get_output_embeddings()(picked)
            else:
                full = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache).logits
                logits = full[b_idx.to(full.device), t_idx.to(full.device)]
        return logits.float(), targets

    def _forward_rows(self, rows: Sequence[_Row], scores: dict, kv: Any = None, skip: int = 0) -> None:
        logits, targets = self._packed_logits(rows, self._pack_mode or "hidden", kv, skip)
        self._collect(logits, targets, [p for r in rows for p in r.pairs], scores)

    @staticmethod
    def _collect(logits: torch.Tensor, targets: torch.Tensor, pairs: Sequence[_Pair], scores: dict) -> None:
        with torch.inference_mode():
            logp = F.log_softmax(logits, dim=-1)
            targets = targets.to(logp.device)
            token_lp = logp.gather(1, targets[:, None]).squeeze(1).cpu()
            hit = (logp.argmax(dim=-1) == targets).cpu()
        start = 0
        for p in pairs:
            end = start + len(p.cont)
            scores[p.key] = (float(token_lp[start:end].sum()), bool(hit[start:end].all()), len(p.cont))
            start = end

    def _score_plain(self, pairs: list[_Pair], scores: dict) -> None:
        """lm-eval's _loglikelihood_tokens: longest first, right padding, no attention mask."""
        pairs = sorted(pairs, key=lambda p: (-(len(p.ctx) + len(p.cont)), p.ctx + p.cont))
        lengths = [min(len(p.ctx) + len(p.cont) - 1, self.max_length) for p in pairs]
        self._run_batches(pairs, lengths, lambda batch: self._forward_plain(batch, scores), use_budget=False)

    def _forward_plain(self, pairs: Sequence[_Pair], scores: dict) -> None:
        inps = [(p.ctx + p.cont)[-(self.max_length + 1):][:-1] for p in pairs]
        T = max(len(x) for x in inps)
        ids = torch.zeros((len(inps), T), dtype=torch.long)
        for b, x in enumerate(inps):
            ids[b, :len(x)] = torch.tensor(x)
        first = min(len(x) - len(p.cont) for x, p in zip(inps, pairs, strict=True))
        self.tokens_run += sum(len(x) for x in inps)
        self.positions_run += len(inps) * T
        kwargs = {"logits_to_keep": T - first} if self._takes_logits_to_keep() else {}
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), use_cache=False, **kwargs).logits
            shift = T - logits.shape[1]      # positions dropped in front by logits_to_keep
            b_idx, t_idx, targets = [], [], []
            for b, (x, p) in enumerate(zip(inps, pairs, strict=True)):
                n = len(p.cont)
                b_idx.extend([b] * n)
                t_idx.extend(range(len(x) - n - shift, len(x) - shift))
                targets.extend(p.cont)
            picked = logits[torch.tensor(b_idx, device=logits.device), torch.tensor(t_idx, device=logits.device)]
        self._collect(picked.float(), torch.tensor(targets), pairs, scores)

    def _takes_logits_to_keep(self) -> bool:
        """Whether the CausalLM forward can skip the LM head on the leading positions."""
        if self._logits_to_keep is None:
            try:
                params = inspect.signature(self.model.forward).parameters
            except (TypeError, ValueError):
                params = {}
            self._logits_to_keep = "logits_to_keep" in params
        return self._logits_to_keep

    # -- the packing probe ----------------------------------------------------------------------

    def _attn_impl(self) -> str:
        return str(getattr(self.model.config, "_attn_implementation", None) or "eager")

    @property
    def packing_mode(self) -> str | None:
        """How multiple-choice requests are scored: "hidden" (LM head on the scored positions
        only), "logits" (the model's own head), "off" (plain per-pair path, see
        `packed_fallback_reason`), or None before the first packed request."""
        return self._pack_mode

    def _packing_available(self) -> bool:
        if self._pack_mode is None:
            self._pack_mode, self.packed_fallback_reason = self._probe_packing()
        return self._pack_mode != "off"

    def _plain_logits(self, rows) -> torch.Tensor:
        """The probes' reference: each pair on its own, no cache, the logits that predict its
        continuation tokens (float32), pairs in row order."""
        out = []
        with torch.inference_mode():
            for row in rows:
                for p in row.pairs:
                    ids = torch.tensor([list(row.ctx + p.cont[:-1])], device=self.device)
                    full = self.model(input_ids=ids, use_cache=False).logits[0]
                    out.append(full[len(row.ctx) - 1:].float())
        return torch.cat(out)

    def _probe_packing(self) -> tuple[str, str | None]:
        """Check, on this model, that packed rows give the per-pair logits; pick the cheapest way."""
        impl = self._attn_impl()
        if impl not in PACKED_ATTENTION:
            return "off", f"attention implementation {impl!r} does not take a custom 4D mask"
        if getattr(self.model.config, "is_encoder_decoder", False):
            return "off", "encoder-decoder model"
        conts = [tuple(self.tok_encode(t, add_special_tokens=False))[:6]
                 for t in (" then it runs far away", " sleeps", " eats an apple")]
        conts = [c for c in conts if c]
        ctx = tuple(self.tok_encode("The probe context: a fox jumps over the lazy dog and"))
        room = self._row_cap() - sum(len(c) - 1 for c in conts)
        ctx = ctx[-max(2, min(len(ctx), room)):]
        if not conts:
            conts = [ctx[-1:]]
        pairs = [_Pair((0, j), ctx, c, False) for j, c in enumerate(conts)]
        rows = [_Row(ctx, tuple(pairs)), _Row(ctx[:4], (_Pair((1, 0), ctx[:4], conts[0], False),))]
        reference = self._plain_logits(rows)
        tol = 1e-3 if self.model.dtype == torch.float32 else 3e-2
        reasons = []
        modes = ("hidden", "logits")
        cfg = self.model.config
        scaled = [a for a in LOGIT_TRANSFORMS if getattr(cfg, a, None) is not None
                  and (a.endswith("softcapping") or getattr(cfg, a) != 1)]
        if scaled:   # the CausalLM forward transforms the head's output: keep its own forward
            modes = ("logits",)
            reasons.append(f"hidden: skipped, config sets {', '.join(scaled)}")
        for mode in modes:
            try:
                got, _ = self._packed_logits(rows, mode)
            except Exception as exc:  # noqa: BLE001 - any failure means this way does not work here
                reasons.append(f"{mode}: {type(exc).__name__}: {exc}")
                continue
            err = float((got - reference).norm() / reference.norm().clamp_min(1e-12))
            if got.shape == reference.shape and err < tol:
                return mode, None
            reasons.append(f"{mode}: relative logit error {err:.2e}")
        model_type = getattr(self.model.config, "model_type", "?")
        return "off", (f"model type {model_type!r} with {impl!r} attention does not honour the packed "
                       f"4D mask / position ids ({'; '.join(reasons)})")

    # -- the prefix-reuse probe ----------------------------------------------------------------

    @property
    def prefix_mode(self) -> str | None:
        """Whether shared prefixes are computed once and reused as a KV cache: "on", "off" (see
        `prefix_fallback_reason`), or None before the first request that could use it."""
        return self._prefix_mode

    def fast_paths(self) -> dict[str, Any]:
        """The scoring and generation paths this backend took, with the reason of every fallback
        (recorded in the run by the worker, shown in the report)."""
        return {"packing": self._pack_mode, "packing_fallback": self.packed_fallback_reason,
                "prefix_reuse": self._prefix_mode, "prefix_fallback": self.prefix_fallback_reason,
                "generation": self._gen_mode, "generation_fallback": self.gen_fallback_reason,
                "prefix_reuse_generation": self._gen_prefix,
                "prefix_generation_fallback": self.gen_prefix_fallback_reason}

    def _prefix_available(self) -> bool:
        if not self.prefix_reuse:
            return False
        if self._prefix_mode is None:
            self._prefix_mode, self.prefix_fallback_reason = self._probe_prefix()
        return self._prefix_mode == "on"

    def _probe_prefix(self) -> tuple[str, str | None]:
        """Check, on this model, that rows scored after a cached shared prefix give the per-pair
        logits of a plain forward pass (and the same argmax)."""
        cfg = self.model.config
        window = getattr(cfg, "sliding_window", None)
        if isinstance(window, int) and window > 0 and getattr(cfg, "use_sliding_window", True):
            return "off", f"sliding-window attention ({window} tokens): a reused prefix cache is not checked there"
        if getattr(cfg, "is_encoder_decoder", False):
            return "off", "encoder-decoder model"
        if not self._packing_available():
            return "off", f"needs the packed 4D mask, which is off here ({self.packed_fallback_reason})"
        head = tuple(self.tok_encode("A probe primer shared by every question: the fox, the dog, the cat, the bird "
                                     "and the fish all live together by the old river bank."))
        tails = [tuple(self.tok_encode(t, add_special_tokens=False))
                 for t in (" Which one swims?", " Which one flies high?")]
        conts = [tuple(self.tok_encode(t, add_special_tokens=False))[:4] for t in (" the fish", " the bird")]
        room = self._row_cap() - max(len(t) for t in tails) - sum(len(c) - 1 for c in conts)
        if room < 2:
            return "off", f"the model's maximum length {self._row_cap()} is too short to check a shared prefix"
        head = head[:room - 1] if len(head) >= room else head
        rows = [_Row(head + t, tuple(_Pair((i, j), head + t, c, False) for j, c in enumerate(conts)))
                for i, t in enumerate(tails)]
        reference = self._plain_logits(rows)
        skip = len(head)
        try:
            kv = compute_prefix(self.model, head, self.device, hidden=self._pack_mode != "logits")
            got, _ = self._packed_logits(rows, self._pack_mode or "hidden", kv, skip)
        except Exception as exc:  # noqa: BLE001 - any failure means the reused cache does not work here
            return "off", f"scoring after a cached prefix failed: {type(exc).__name__}: {exc}"
        tol = 1e-3 if self.model.dtype == torch.float32 else 3e-2
        err = float((got - reference).norm() / reference.norm().clamp_min(1e-12)) \
            if got.shape == reference.shape else float("inf")
        same_argmax = got.shape == reference.shape and bool((got.argmax(-1) == reference.argmax(-1)).all())
        if err < tol and same_argmax:
            return "on", None
        model_type = getattr(cfg, "model_type", "?")
        return "off", (f"model type {model_type!r} with {self._attn_impl()!r} attention does not give the plain "
                       f"numbers after a cached prefix (relative logit error {err:.2e}"
                       f"{'' if same_argmax else ', argmax differs'})")

    # -- batching with OOM back-off -------------------------------------------------------------

    def _run_batches(self, items: Sequence[Any], lengths: Sequence[int], run: Callable[[Sequence[Any]], None],
                     *, use_budget: bool) -> None:
        """Run `items` (sorted longest first) in batches; on GPU 'auto', halve and retry on OOM."""
        oom = _cuda_oom()
        i = 0
        while i < len(items):
            n = self._batch_len(lengths, i, use_budget)
            try:
                run(items[i:i + n])
            except oom as exc:
                if not self._shrink(n):
                    raise BackendError(f"out of GPU memory with a batch of {n} at {lengths[i]} tokens",
                                       hint="lower --batch-size or use --batch-size auto") from exc
                continue
            i += n

    def _batch_len(self, lengths: Sequence[int], i: int, use_budget: bool) -> int:
        budget = self._token_budget if use_budget else None
        rows_cap = self._rows if (not use_budget or budget is None) else len(lengths)
        longest = max(lengths[i], 1)
        n = 1
        while i + n < len(lengths) and n < rows_cap and (budget is None or (n + 1) * longest <= budget):
            n += 1
        return n

    def _shrink(self, n: int) -> bool:
        if self.settings.batch_size != "auto" or not self._on_cuda or n <= 1:
            return False
        gc.collect()
        torch.cuda.empty_cache()
        self._rows = max(1, min(self._rows, n) // 2)
        if self._token_budget is not None:
            self._token_budget = max(1, self._token_budget // 2)
        return True

    # -- generation -----------------------------------------------------------------------------

    def format_chat(self, text: str) -> str:
        """`text` as one user turn in the tokenizer's chat template, with the generation prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(f"tokenizer of {self.settings.path} has no chat template",
                               hint="drop --chat-template, or use a tokenizer that has one")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def _encode_prompt(self, prompt: str) -> list[int]:
        if self.settings.chat_template:
            return list(self.tokenizer.encode(self.format_chat(prompt), add_special_tokens=False))
        # lm-eval's tok_batch_encode, decided per prompt rather than by the batch's first prompt
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and prompt.startswith(bos):
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        if self._add_bos is not None:
            return list(self.tokenizer.encode(prompt, add_special_tokens=bool(self._add_bos)))
        return list(self.tokenizer.encode(prompt))

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return sorted(ids)

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """Greedy completions, cut at the first stop string / EOS: finished sequences leave the
        batch and waiting prompts take their place (evalcore/backends/genbatch.py), or, where the
        probe says that differs from `generate`, left-padded `generate` batches, longest first."""
        self._check_open()
        encoded = [self._encode_prompt(r.prompt) for r in requests]
        if any(r.max_new_tokens >= 1 for r in requests) and self._refill_available():
            return self._generate_refill(requests, encoded)
        out: list[str | None] = [None] * len(requests)
        by_budget: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            if r.max_new_tokens < 1:
                out[i] = ""
                continue
            by_budget.setdefault(r.max_new_tokens, []).append(i)
        for max_new, idx in by_budget.items():
            max_ctx = self.max_length - max_new
            if max_ctx <= 0:
                raise BackendError(f"max_new_tokens {max_new} leaves no room for the prompt in the "
                                   f"model's maximum length {self.max_length}")
            idx.sort(key=lambda i: (-len(encoded[i]), requests[i].prompt))
            lengths = [min(len(encoded[i]), max_ctx) for i in idx]

            def run(batch: Sequence[int], max_new: int = max_new, max_ctx: int = max_ctx) -> None:
                texts = self._generate_batch([encoded[i][-max_ctx:] for i in batch],
                                             [requests[i].stop for i in batch], max_new)
                for i, text in zip(batch, texts, strict=True):
                    out[i] = text

            self._run_batches(idx, lengths, run, use_budget=False)
        return [o if o is not None else "" for o in out]

    def _refill_available(self) -> bool:
        if self._gen_mode is None:
            self._gen_mode, self.gen_fallback_reason, self._gen_prefix, self.gen_prefix_fallback_reason = \
                self._probe_generation()
        return self._gen_mode == "refill"

    def _refill(self) -> GreedyRefill:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def stopped(ids: list[int], stops: tuple[str, ...]) -> bool:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            return any(s in text for s in stops)

        def count(real: int, padded: int) -> None:
            self.tokens_run += real
            self.positions_run += padded

        return GreedyRefill(self.model, device=self.device, pad_id=pad, eos=self._eos_ids(),
                            prefix_kv=self._prefix_kv, is_stopped=stopped, on_tokens=count)

    def _gen_jobs(self, requests: Sequence[GenRequest], encoded: list[list[int]], prefixes: bool) -> list[Job]:
        jobs = []
        for i, r in enumerate(requests):
            if r.max_new_tokens < 1:
                continue
            max_ctx = self.max_length - r.max_new_tokens
            if max_ctx <= 0:
                raise BackendError(f"max_new_tokens {r.max_new_tokens} leaves no room for the prompt in the "
                                   f"model's maximum length {self.max_length}")
            jobs.append(Job(i, tuple(encoded[i][-max_ctx:]), r.max_new_tokens, tuple(s for s in r.stop if s)))
        if prefixes and jobs:
            plan = plan_prefixes([j.ids for j in jobs], known=self._prefixes.keys())
            for k, j in enumerate(jobs):
                j.prefix = plan.get(k, ())
        return jobs

    def _generate_refill(self, requests: Sequence[GenRequest], encoded: list[list[int]]) -> list[str]:
        jobs = self._gen_jobs(requests, encoded, self._gen_prefix == "on")
        done = self._run_refill(jobs)
        out = [""] * len(requests)
        for j in jobs:
            text = self.tokenizer.decode(done[j.index], skip_special_tokens=True)
            out[j.index] = cut_at_stops(text, requests[j.index].stop)
        return out

    def _run_refill(self, jobs: list[Job]) -> dict[int, list[int]]:
        """Run the jobs with the batch size as slots; on GPU 'auto', halve and go on after OOM."""
        runner, done, oom = self._refill(), {}, _cuda_oom()
        while True:
            try:
                runner.run(jobs, self._rows, done)
                return done
            except oom as exc:
                if not self._shrink(self._rows):
                    raise BackendError(f"out of GPU memory generating with {self._rows} sequences at a time",
                                       hint="lower --batch-size or use --batch-size auto") from exc

    def _probe_generation(self) -> tuple[str, str | None, str | None, str | None]:
        """Check, on this model, that the refill loop gives `generate`'s greedy tokens (one prompt
        at a time, as lm-eval's reference), with and without a cached shared prefix."""
        cfg = self.model.config
        if getattr(cfg, "is_encoder_decoder", False):
            return "generate", "encoder-decoder model", None, None
        extra = needs_generate(getattr(self.model, "generation_config", None))
        if extra:
            return "generate", f"the generation config sets {', '.join(extra)}: `generate` applies it", None, None
        head = "A probe primer shared by every prompt: the fox, the dog, the cat, the bird and the fish."
        prompts = [head + " The fox", head + " Then the bird and the cat", "Short prompt:"]
        reqs = [GenRequest(p, 6) for p in prompts]
        encoded = [self._encode_prompt(p) for p in prompts]
        eos = self._eos_ids()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        reference = {}
        with torch.inference_mode():
            for i, ids in enumerate(encoded):
                ids = ids[-(self.max_length - 6):]
                got = self.model.generate(input_ids=torch.tensor([ids], device=self.device), max_new_tokens=6,
                                          do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                          pad_token_id=pad, eos_token_id=eos or None)[0, len(ids):].tolist()
                k = next((n for n, t in enumerate(got) if t in eos), len(got))
                reference[i] = got[:k]
        ways = [False] + ([True] if self.prefix_reuse else [])
        results: dict[bool, str | None] = {}
        for with_prefix in ways:
            try:
                done = {}
                self._refill().run(self._gen_jobs(reqs, encoded, with_prefix), 2, done)
                results[with_prefix] = None if done == reference else "greedy tokens differ from `generate`"
            except Exception as exc:  # noqa: BLE001 - any failure means this way does not work here
                results[with_prefix] = f"{type(exc).__name__}: {exc}"
        model_type = getattr(cfg, "model_type", "?")
        if results[False] is not None:
            return "generate", f"model type {model_type!r}: the refill loop failed its check ({results[False]})", \
                None, None
        if not self.prefix_reuse:
            return "refill", None, None, None
        if results[True] is not None:
            return "refill", None, "off", f"model type {model_type!r}: prefill after a cached prefix failed its " \
                f"check ({results[True]})"
        return "refill", None, "on", None

    def _generate_batch(self, prompts: list[list[int]], stops: list[tuple[str, ...]], max_new: int) -> list[str]:
        T = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), T), pad, dtype=torch.long)
        attn = torch.zeros((len(prompts), T), dtype=torch.long)
        for b, p in enumerate(prompts):
            if p:
                ids[b, T - len(p):] = torch.tensor(p)
                attn[b, T - len(p):] = 1
        eos = self._eos_ids()
        criteria = transformers.StoppingCriteriaList([_StopOnStrings(self.tokenizer, stops, T)])
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                max_new_tokens=max_new, do_sample=False, num_beams=1, temperature=None, top_p=None,
                top_k=None, pad_token_id=pad, eos_token_id=eos or None, stopping_criteria=criteria,
                use_cache=True)
        steps = len(prompts) * max(0, generated.shape[1] - T - 1)
        self.tokens_run += sum(len(p) for p in prompts) + steps
        self.positions_run += len(prompts) * T + steps
        texts = []
        for row, row_stops in zip(generated[:, T:].tolist(), stops, strict=True):
            for k, tok in enumerate(row):
                if tok in eos:
                    row = row[:k]
                    break
            texts.append(cut_at_stops(self.tokenizer.decode(row, skip_special_tokens=True), row_stops))
        return texts

    # -- identity -------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What the answers depend on. `digest` is a sha256 over the content fields (weights and
        config hash, class, dtype, tokenizer and chat template hashes, max length, kwargs that
        change results, library versions), so a local copy and the hub cache of the same files
        agree; `model_commit` / `tokenizer_commit` (hub snapshots) and `source` are informative."""
        self._check_open()
        if self._identity is None:
            self._identity = self._compute_identity()
        return dict(self._identity)

    def _folder_commit(self, source: _Source) -> tuple[Path | None, str | None]:
        folder = source.snapshot_folder(self._cache_dir)
        commit = None
        if folder is not None and not source.local and folder.parent.name == "snapshots":
            commit = folder.name
        return folder, commit

    def _model_hash(self, folder: Path | None) -> str:
        """sha256 over config.json, generation_config.json and each weight file's name, size and
        sha256. In the hub cache a weight blob is named by its sha256 (LFS), so nothing is read;
        a local folder's weights are hashed once per backend."""
        if folder is None:
            return _sha256_bytes(_canonical(self.model.config.to_dict()).encode())
        h = hashlib.sha256()
        for f in sorted(folder.iterdir(), key=lambda p: p.name):
            if not f.is_file():
                continue
            if f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".index.json"):
                real = Path(os.path.realpath(f))
                digest = real.name if _SHA256_HEX.match(real.name) and real.parent.name == "blobs" \
                    else _sha256_file(real)
                h.update(f"{f.name}:{real.stat().st_size}:{digest}\n".encode())
            elif f.name in ("config.json", "generation_config.json"):
                h.update(f"{f.name}:".encode())
                h.update(f.read_bytes())
        return h.hexdigest()

    def _tokenizer_hash(self, folder: Path | None) -> str:
        files = [folder / n for n in TOKENIZER_FILES] if folder is not None else []
        files = [f for f in files if f.is_file()]
        if not files:
            vocab = _canonical(sorted(self.tokenizer.get_vocab().items()))
            return _sha256_bytes(vocab.encode(), _canonical(self.tokenizer.special_tokens_map).encode())
        return _sha256_bytes(*(f.name.encode() + b"\0" + f.read_bytes() for f in files))

    def _compute_identity(self) -> dict[str, Any]:
        model_folder, model_commit = self._folder_commit(self._model_src)
        tok_folder, tok_commit = self._folder_commit(self._tok_src)
        template = getattr(self.tokenizer, "chat_template", None)
        ident: dict[str, Any] = {
            "backend": "hf",
            "model_hash": self._model_hash(model_folder),
            "model_class": type(self.model).__name__,
            "model_type": getattr(self.model.config, "model_type", None),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "tokenizer_class": type(self.tokenizer).__name__,
            "tokenizer_hash": self._tokenizer_hash(tok_folder),
            "chat_template": bool(self.settings.chat_template),
            "chat_template_hash": _sha256_bytes(_canonical(template).encode()) if template else None,
            "max_length": self.max_length,
            "model_kwargs": _semantic(self._model_kwargs),
            "tokenizer_kwargs": _semantic(self._tokenizer_kwargs),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        ident["digest"] = hashlib.sha256(_canonical(ident).encode()).hexdigest()
        ident.update(model_commit=model_commit, tokenizer_commit=tok_commit, source={
            "model_path": self.settings.path, "model_revision": self.settings.revision,
            "tokenizer_path": self.settings.tokenizer_path or self.settings.path,
            "tokenizer_revision": self.settings.tokenizer_revision if self.settings.tokenizer_path
            else self.settings.revision})
        return ident

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
