"""The probes of the HF backend's fast scoring paths: on first use, per model, check that packed
rows (a custom 4D mask and position ids) and rows after a cached shared prefix give the plain
per-pair logits; where they do not, scoring falls back to the plain path and the reason is kept
(`fast_paths`, recorded in the run and shown in its report).
"""

from __future__ import annotations

from typing import Any

import torch

from evalcore.backends.hf.scoring import PACKED_ATTENTION
from evalcore.backends.hf.tokens import _Pair, _Row
from evalcore.backends.prefix import compute_prefix

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class Probes:
    """HFBackend's probes (mixed into `HFBackend`)."""

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
