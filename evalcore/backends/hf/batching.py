"""Batching for the HF backend: items sorted longest first run in batches capped by the batch
size (and, for packed rows, a padded-token budget); with batch_size "auto" on a GPU, an
out-of-memory error halves the batch and the same items run again.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch

from evalcore.errors import BackendError

CPU_TOKEN_BUDGET = 256             # padded tokens per packed forward pass; fastest measured on CPU


def _cuda_oom() -> type[BaseException]:
    return getattr(torch.cuda, "OutOfMemoryError", RuntimeError)


class Batching:
    """HFBackend's batching (mixed into `HFBackend`: reads `settings`, `_rows`, `_token_budget`)."""

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
