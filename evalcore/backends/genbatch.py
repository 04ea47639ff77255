"""Greedy generation that stops working on a sequence once it is done.

`model.generate` on a left-padded batch runs until every sequence of the batch has stopped:
a sequence that hit EOS or a stop string keeps costing a forward row each step. Here a finished
sequence leaves the batch at once (its rows of the KV cache are dropped), and when half the slots
are free the waiting prompts are prefilled and join the running batch: the caches are
left-padded to one length (masked key/value positions), so every sequence keeps its own
positions and attention span. Prompts are prefilled in batches of similar length (padding costs
a forward position each; another pass costs about `PASS_COST` positions), not padded to the
longest of all. A prompt that starts with a prefix shared by other prompts is
prefilled after that prefix's cached key/values (evalcore/backends/prefix.py).

The decoding is plain greedy, as `generate(do_sample=False, num_beams=1)`: argmax of the last
logits, stop at EOS, at `max_new` tokens, or once the decoded text holds a stop string (checked
after every token, as the stopping criterion of the HF backend does). `needs_generate` names the
generation-config settings that would add logits processors to `generate`; where one is set, the
backend keeps using `generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .prefix import cache_kwarg, expanded_cache, split_by_length

# what one more forward pass costs, in prompt positions, by device type: on a CPU a pass reads
# every weight once (about what 16 positions of a small model compute); a GPU runs a few hundred
# positions in the time of a pass. Prompts are prefilled in batches of similar length that
# minimise padded positions + passes x this (prefix.split_by_length).
PASS_COST = {"cpu": 16}
PASS_COST_DEFAULT = 512

# generation-config fields that make `generate` change greedy logits (logits processors)
PROCESSOR_FIELDS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                    "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
                    "forced_bos_token_id", "forced_eos_token_id", "forced_decoder_ids",
                    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
                    "sequence_bias", "guidance_scale", "watermarking_config", "stop_strings", "max_time")


def needs_generate(generation_config: Any) -> list[str]:
    """The fields of `generation_config` set away from their defaults that `generate` would act
    on beyond plain greedy decoding (empty: the loop here gives what `generate` gives)."""
    if generation_config is None:
        return []
    from transformers import GenerationConfig

    default = GenerationConfig()
    return [f for f in PROCESSOR_FIELDS
            if getattr(generation_config, f, None) not in (None, getattr(default, f, None), [], 0)
            and not (f.endswith("repetition_penalty") and getattr(generation_config, f) == 1.0)
            and not (f == "guidance_scale" and getattr(generation_config, f) == 1.0)]


@dataclass
class Job:
    """One prompt to continue: token ids (after truncation), the prefix cached for it (or ())."""

    index: int
    ids: tuple[int, ...]
    max_new: int
    stops: tuple[str, ...]
    prefix: tuple[int, ...] = ()


class _Batch:
    """The running sequences: their KV cache, 2D attention mask, next token and position."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.next: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.jobs: list[Job] = []
        self.out: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    @layers.setter
    def layers(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.cache = expanded_cache(kv, kv[0][0].shape[0])

    def join(self, others: Sequence[_Batch]) -> None:
        """Add the sequences of `others`: every cache left-padded to the widest, one copy per layer."""
        parts = ([self] if self.jobs else []) + [o for o in others if o.jobs]
        if len(parts) == 1:
            self.__dict__.update(parts[0].__dict__)
            return
        width = max(b.mask.shape[1] for b in parts)

        def left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        pads = [width - b.mask.shape[1] for b in parts]
        layers = [b.layers for b in parts]
        self.layers = [(torch.cat([left_pad(ls[i][0], n, 2) for ls, n in zip(layers, pads, strict=True)]),
                        torch.cat([left_pad(ls[i][1], n, 2) for ls, n in zip(layers, pads, strict=True)]))
                       for i in range(len(layers[0]))]
        self.mask = torch.cat([left_pad(b.mask, n, 1) for b, n in zip(parts, pads, strict=True)])
        self.next = torch.cat([b.next for b in parts])
        self.pos = torch.cat([b.pos for b in parts])
        self.jobs = [j for b in parts for j in b.jobs]
        self.out = [o for b in parts for o in b.out]

    def keep(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0          # columns masked for every row left: drop
        self.mask = mask[:, first:]
        self.layers = [(k.index_select(0, idx)[:, :, first:], v.index_select(0, idx)[:, :, first:])
                       for k, v in self.layers]
        self.next, self.pos = self.next.index_select(0, idx), self.pos.index_select(0, idx)
        self.jobs = [self.jobs[i] for i in rows]
        self.out = [self.out[i] for i in rows]


class GreedyRefill:
    """Runs `Job`s through `model` with at most `slots` sequences at a time (see the module doc).

    `prefix_kv(prefix)` gives the cached key/values of a shared prefix; `is_stopped(ids, stops)`
    says whether generated ids hold a stop string; `on_tokens(real, padded)` counts the tokens run.
    """

    def __init__(self, model: Any, *, device: Any, pad_id: int, eos: Sequence[int],
                 prefix_kv: Callable[[tuple[int, ...]], Any],
                 is_stopped: Callable[[list[int], tuple[str, ...]], bool],
                 on_tokens: Callable[[int, int], None] = lambda real, padded: None) -> None:
        self.model, self.device, self.pad_id, self.eos = model, device, pad_id, set(eos)
        self.prefix_kv, self.is_stopped, self.on_tokens = prefix_kv, is_stopped, on_tokens
        self._cache_kw = cache_kwarg(model.forward)
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in _params(model.forward) else {}
        self.pass_cost = PASS_COST.get(getattr(torch.device(device), "type", "cpu"), PASS_COST_DEFAULT)

    def run(self, jobs: Sequence[Job], slots: int, done: dict[int, list[int]]) -> None:
        """Generate every job not yet in `done`; fills `done` (job index -> generated ids, EOS
        left out) as sequences finish, so a caller can retry what is left after an error."""
        waiting = sorted((j for j in jobs if j.index not in done), key=lambda j: (j.prefix, -len(j.ids), j.index))
        batch = _Batch()
        while waiting or len(batch):
            if waiting and (len(batch) <= slots // 2 or not len(batch)):
                group = [waiting.pop(0)]
                while waiting and len(batch) + len(group) < slots and waiting[0].prefix == group[0].prefix:
                    group.append(waiting.pop(0))
                group.sort(key=lambda j: (-len(j.ids), j.index))
                tails = [len(j.ids) - len(j.prefix) for j in group]
                chunks, k = [], 0
                for n in split_by_length(tails, len(group), self.pass_cost):
                    chunks.append(self._prefill(group[k:k + n]))
                    k += n
                batch.join(chunks)
            else:
                self._step(batch)
            finished = [i for i, (job, out) in enumerate(zip(batch.jobs, batch.out, strict=True))
                        if self._finished(job, out)]
            if finished:
                for i in finished:
                    out = batch.out[i]
                    done[batch.jobs[i].index] = out[:-1] if out and out[-1] in self.eos else out
                batch.keep([i for i in range(len(batch)) if i not in set(finished)])

    def _finished(self, job: Job, out: list[int]) -> bool:
        return bool(out) and (out[-1] in self.eos or len(out) >= job.max_new
                              or (bool(job.stops) and self.is_stopped(out, job.stops)))

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                             **{self._cache_kw: cache}, **self._keep)
        return out.logits[:, -1].argmax(-1)

    def _prefill(self, group: list[Job]) -> _Batch:
        skip = len(group[0].prefix)
        tails = [j.ids[skip:] for j in group]
        T = max(len(t) for t in tails)
        ids = torch.full((len(group), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), skip + T), dtype=torch.long)
        mask[:, :skip] = 1
        for b, t in enumerate(tails):
            ids[b, T - len(t):] = torch.tensor(t)
            mask[b, skip + T - len(t):] = 1
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, skip:]
        from transformers import DynamicCache

        cache = expanded_cache(self.prefix_kv(group[0].prefix), len(group)) if skip else DynamicCache()
        self.on_tokens(sum(len(t) for t in tails), len(tails) * T)
        first = self._forward(ids.to(self.device), mask.to(self.device), pos.to(self.device), cache)
        b = _Batch()
        b.cache = cache
        b.mask = mask.to(self.device)
        b.next = first
        b.pos = torch.tensor([len(j.ids) for j in group], dtype=torch.long, device=self.device)
        b.jobs = list(group)
        b.out = [[int(t)] for t in first.tolist()]
        return b

    def _step(self, batch: _Batch) -> None:
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        self.on_tokens(len(batch), len(batch))
        nxt = self._forward(batch.next[:, None], mask, batch.pos[:, None], batch.cache)
        batch.mask, batch.next, batch.pos = mask, nxt, batch.pos + 1
        for out, t in zip(batch.out, nxt.tolist(), strict=True):
            out.append(int(t))


def _params(fn: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
