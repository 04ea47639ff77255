"""What a plan needs from the hub (models, tokenizers, datasets, those its lm-eval task files
name) and which of its paths are local: read by `evalcore needs` and `cachekit prefetch --plan`.
Apart from the plan itself, since it reads the task files (benchmarks) that read the plan."""

from __future__ import annotations

from evalcore.backends.registry import backend_kind
from evalcore.benchmarks.taskfile import bind
from evalcore.plan.spec import Plan, is_local


def plan_sources(plan: Plan, include=(), exclude=(), trust_remote_code=False) -> list:
    """The cachekit sources a plan needs from the hub (local folders and files are skipped)."""
    from cachekit.sources import Source

    out = []
    for m in plan.models:
        if not backend_kind(m.backend).reads_files:  # a stand-in model: nothing to fetch
            continue
        for path, rev in ((m.path, m.revision), (m.tokenizer_path, m.tokenizer_revision or m.revision)):
            if path and not is_local(path):
                out.append(Source("model", path, rev or "main", None, tuple(include), tuple(exclude),
                                  trust_remote_code or m.trust_remote_code))
    for d in bind(plan).datasets:  # lm-eval task files name their hub datasets
        if not is_local(d.path):
            out.append(Source("dataset", d.path, d.revision or "main", None, (), (), False))
    return list(dict.fromkeys(out))


def plan_local_paths(plan: Plan) -> list[tuple[str, str]]:
    """(kind, path) of the plan's local model folders and data files, which no prefetch fetches."""
    out = [("model", p) for m in plan.models for p in (m.path, m.tokenizer_path) if p and is_local(p)]
    out += [("dataset", d.path) for d in plan.datasets if is_local(d.path)]
    return list(dict.fromkeys(out))
