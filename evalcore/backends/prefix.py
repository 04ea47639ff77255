"""Token prefixes shared across requests: which requests share one, and their KV cache.

Few-shot prompts built from fixed exemplars (MMLU's five dev questions per subject, BBH's and
gsm8k's fixed exemplars, a primer in front of every question) repeat hundreds of tokens in every
request. `plan_prefixes` finds such prefixes from the token ids alone (pure logic, no torch):
requests are sorted, neighbours are grouped while the tokens a group saves do not shrink, and
every prefix leaves at least one token of its sequence to compute (the position that predicts
the first continuation token, or the last prompt token of a generation).

`PrefixStore` keeps the key/value states of the prefixes a worker computed (least recently used
out first, bounded in bytes), so later calls of the same worker reuse them; `expanded_cache`
turns one stored prefix into a `transformers.DynamicCache` for a batch, a fresh object each time
(the forward pass appends to it; the stored tensors are never written).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

MIN_PREFIX = 16                     # shorter shared prefixes are not worth an extra forward pass
STORE_BYTES = 512 << 20             # key/value bytes a worker keeps for reuse across calls

Ids = tuple[int, ...]


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_prefixes(seqs: Sequence[Ids], *, min_len: int = MIN_PREFIX,
                  known: Iterable[Ids] = ()) -> dict[int, Ids]:
    """Index of a sequence -> the shared prefix to compute once for it.

    A known prefix (already computed) that starts a sequence and is shorter than it is taken
    first, the longest such one. The other sequences are sorted; a sequence joins its
    predecessor's group when their common prefix is at least `min_len` tokens and the group's
    saving (members - 1) x prefix length does not fall by taking it in. Groups of one get none.
    """
    out: dict[int, Ids] = {}
    known = sorted({tuple(k) for k in known if len(k) >= min_len}, key=len, reverse=True)
    rest: list[int] = []
    for i, s in enumerate(seqs):
        hit = next((k for k in known if len(k) < len(s) and tuple(s[:len(k)]) == k), None)
        if hit is not None:
            out[i] = hit
        else:
            rest.append(i)
    rest.sort(key=lambda i: tuple(seqs[i]))
    group: list[int] = []
    prefix: Ids = ()

    def flush() -> None:
        if len(group) >= 2 and len(prefix) >= min_len:
            for j in group:
                out[j] = prefix

    for i in rest:
        s = tuple(seqs[i][:-1])              # at least one token stays to be computed
        if group:
            shared = common_length(prefix, s)
            if shared >= min_len and len(group) * shared >= (len(group) - 1) * len(prefix):
                group.append(i)
                prefix = prefix[:shared]
                continue
            flush()
        group, prefix = [i], s
    flush()
    return out


def split_by_length(lengths: Sequence[int], max_rows: int, overhead: int) -> list[int]:
    """Sizes of consecutive batches for items sorted longest first, at most `max_rows` each, that
    minimise the positions run (rows x the batch's longest, padding included) plus `overhead`
    positions per batch (what one more forward pass costs: reading the weights once). Ties go to
    the larger last batch.

    Dynamic programming over the split points (O(n x max_rows)). `overhead` >= the longest item
    gives full batches whenever padding costs less than a pass; 0 gives batches of equal lengths.
    """
    n = len(lengths)
    if any(a < b for a, b in zip(lengths, lengths[1:], strict=False)):
        raise ValueError("lengths must be sorted longest first")
    max_rows = max(1, max_rows)
    best = [0] + [None] * n               # best[i]: cost of the first i items
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for k in range(1, min(max_rows, i) + 1):   # last batch: items i-k .. i-1, longest = lengths[i-k]
            c = best[i - k] + k * lengths[i - k] + overhead
            if best[i] is None or c <= best[i]:      # ties: the larger batch
                best[i], cut[i] = c, k
    sizes = []
    i = n
    while i:
        sizes.append(cut[i])
        i -= cut[i]
    return sizes[::-1]


def prefix_floor(seqs: Iterable[Sequence[int]]) -> int:
    """Tokens of the deduplicated prefix tree of `seqs` (distinct prefixes): the fewest tokens an
    exact causal scorer has to run through the model for them."""
    nodes: set[Ids] = set()
    count = 0
    for s in seqs:
        s = tuple(s)
        for k in range(len(s), 0, -1):        # walk back until a prefix already counted
            if s[:k] in nodes:
                break
            nodes.add(s[:k])
            count += 1
    return count


class PrefixStore:
    """Key/value states of computed prefixes, least recently used out first, at most `max_bytes`."""

    def __init__(self, max_bytes: int = STORE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Ids, tuple[list[tuple[Any, Any]], int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.computed = 0
        self.tokens_computed = 0

    def __contains__(self, prefix: Ids) -> bool:
        return prefix in self._items

    def keys(self) -> list[Ids]:
        return list(self._items)

    def get(self, prefix: Ids) -> list[tuple[Any, Any]] | None:
        item = self._items.get(prefix)
        if item is None:
            return None
        self._items.move_to_end(prefix)
        self.hits += 1
        return item[0]

    def put(self, prefix: Ids, kv: list[tuple[Any, Any]]) -> None:
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        self.computed += 1
        self.tokens_computed += len(prefix)
        if size > self.max_bytes:
            return                          # used once by the caller, not kept
        if prefix in self._items:
            self._bytes -= self._items.pop(prefix)[1]
        while self._items and self._bytes + size > self.max_bytes:
            self._bytes -= self._items.popitem(last=False)[1][1]
        self._items[prefix] = (kv, size)
        self._bytes += size

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


def cache_kwarg(forward: Any) -> str:
    """The name the forward pass takes its KV cache by: `cache` (transformers >= 5.2x) or the older
    `past_key_values`."""
    import inspect

    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def compute_prefix(model: Any, prefix: Ids, device: Any, *, hidden: bool) -> list[tuple[Any, Any]]:
    """Run `prefix` through the model once (batch of one) and return its per-layer (key, value)."""
    import torch
    from transformers import DynamicCache

    ids = torch.tensor([list(prefix)], device=device)
    cache = DynamicCache()
    fn = model.base_model if hidden else model
    with torch.inference_mode():
        fn(input_ids=ids, use_cache=True, **{cache_kwarg(fn.forward): cache})
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    if not kv or any(k is None or k.shape[-2] != len(prefix) for k, _ in kv):
        raise RuntimeError("the model did not fill the key/value cache for the prefix")
    return kv


def expanded_cache(kv: Sequence[tuple[Any, Any]], batch: int) -> Any:
    """A fresh DynamicCache holding the prefix for `batch` rows (views; the forward pass appends
    by concatenation, so the stored tensors stay as they are)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:]))
                                        for k, v in kv])
