"""Log-likelihood scoring for the HF backend: the packed shared-context path (one row per context
with every continuation, a 4D mask, position ids restarting after the context, the LM head only
where a continuation token is predicted, rows after a cached shared prefix) and the plain
per-pair path (lm-eval's `_loglikelihood_tokens`). Which path a model may take is decided by
the probes (probes.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from evalcore.backends.base import LoglikRequest, LoglikResult
from evalcore.backends.hf.tokens import _Pair, _Row
from evalcore.backends.prefix import cache_kwarg, compute_prefix, expanded_cache, plan_prefixes
from evalcore.errors import BackendError

PACKED_ATTENTION = MappingProxyType({"sdpa": "bool", "eager": "float"})  # implementation -> mask kind


class Scoring:
    """HFBackend's scoring (mixed into `HFBackend`)."""

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
