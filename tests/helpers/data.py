"""Reading test data: rows of a JSON-lines file (gzipped or not), and the task a plan with one
named dataset runs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from evalcore.plan.spec import parse_plan
from evalcore.plan.tasks import task_for


def read_rows(p: Path) -> list[dict]:
    """Every row of a .jsonl file, or of a .jsonl.gz file; blank lines skipped."""
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def task_named(name: str):
    """The task of the built-in benchmark `name`, as a plan naming it would run it."""
    return task_for(parse_plan({"datasets": [{"name": name}]}).datasets[0])


def requests_by_doc(p: Path) -> dict[tuple[str, int], list[dict]]:
    """A reference file of lm-eval requests (one JSON line each: task, doc, request, ...) as
    {(task, doc): its requests in request order}."""
    out: dict[tuple[str, int], list[dict]] = {}
    for rec in read_rows(p):
        out.setdefault((rec["task"], rec["doc"]), []).append(rec)
    return {k: sorted(v, key=lambda r: r["request"]) for k, v in out.items()}
