"""Greedy generation for the HF backend: the refill loop (evalcore/backends/genbatch.py: finished
sequences leave the batch, waiting prompts take their place, shared prefixes prefilled once),
checked against `generate` by a probe on first use, else left-padded `generate` batches; stop
strings cut as lm-eval's `postprocess_generated_text` cuts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import transformers

from evalcore.backends.base import GenRequest
from evalcore.backends.genbatch import GreedyRefill, Job, needs_generate
from evalcore.backends.hf.batching import _cuda_oom
from evalcore.backends.prefix import plan_prefixes
from evalcore.errors import BackendError


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



class Generation:
    """HFBackend's generation (mixed into `HFBackend`)."""

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
