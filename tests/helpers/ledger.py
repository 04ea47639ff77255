"""A run ledger set up for a test: `parts` makes partition rows, `new_ledger` a ledger file
holding run `RUN` with them."""

from __future__ import annotations

import json
from pathlib import Path

from evalcore.engine.ledger import Ledger, PartitionRow

RUN = "run-1"


def parts(n: int, models: tuple[str, ...] = ("m1",), per: int = 4, max_attempts: int = 3,
          gpus: tuple[int, ...] = (1,)) -> list[PartitionRow]:
    """n partitions of dataset "arc", `per` samples each, the models taken in turn."""
    out = []
    for i in range(n):
        m = models[i % len(models)]
        out.append(PartitionRow(f"p{i:04d}", m, "arc", f"hash-{m}", json.dumps({"model": m}), "{}",
                                i * per, (i + 1) * per, float(per), gpus[i % len(gpus)], max_attempts))
    return out


def new_ledger(path: Path, partitions: list[PartitionRow], now: float = 0.0) -> Ledger:
    """A new ledger file at `path` with run `RUN` created at `now` from `partitions`."""
    ledger = Ledger(path)
    ledger.create_run(RUN, str(path.parent), "{}", ["evalcore", "eval"], partitions, now=now)
    return ledger
