"""The dry pass before a run: every selected row of every dataset becomes its requests exactly as
a worker would build them (evalcore.benchmarks.engine.requests_for), before any model loads or a
run folder exists. The first bad row of a dataset fails the run with exit 2, naming the dataset,
the row and the field; a rerun cannot fix it, so no resume is advised."""

from __future__ import annotations

from evalcore.benchmarks.engine import fewshot_rows, prepare_rows, requests_for
from evalcore.benchmarks.rows import RowError
from evalcore.errors import BadRow


def dry_run(plan, tasks: dict, resolved) -> dict[str, int]:
    """Check every selected row; returns each dataset's row count (before `limit`)."""
    from evalcore.plan import data

    counts: dict[str, int] = {}
    for d in plan.datasets:
        task = tasks[d.abbr]
        where = f"dataset {d.abbr}"
        try:
            rows = prepare_rows(task, data.load_rows(resolved.datasets[d.abbr]))
        except RowError as exc:
            raise BadRow(f"{where}: {exc.field}: {exc.message}") from None
        pool = rows
        if d.abbr in resolved.fewshot:
            try:
                pool = prepare_rows(task, data.load_rows(resolved.fewshot[d.abbr]))
            except RowError as exc:
                raise BadRow(f"{where} (few-shot split): {exc.field}: {exc.message}") from None
        if not rows:
            raise BadRow(f"{where}: the split has no rows")
        limit = d.limit if d.limit is not None else plan.run.limit
        n = len(rows) if limit is None else min(limit, len(rows))
        for i in range(n):
            try:
                requests_for(task, rows[i], fewshot_rows(task, pool, rows[i], i))
            except RowError as exc:
                raise BadRow(f"{where}: row {i}: {exc.field}: {exc.message}") from None
        counts[d.abbr] = len(rows)
    return counts
