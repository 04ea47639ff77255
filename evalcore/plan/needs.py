"""What a plan's datasets need from the hub, down to the config and split: a built-in spanning a
multi-config repo needs every config (BBH: 27), a few-shot built-in also its few-shot split.
`evalcore needs` prints it; `cachekit prefetch --plan` checks the bundle holds all of it. Pure
(apart from reading a manifest that is passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetNeed:
    repo_id: str
    revision: str
    parts: tuple[tuple[str | None, str], ...]  # (config, split); config None: the repo's only (or "default") one
    datasets: tuple[str, ...]  # the plan's dataset names that need it

    @property
    def configs(self) -> tuple[str | None, ...]:
        return tuple(dict.fromkeys(c for c, _ in self.parts))


def _one(spec) -> tuple[str, str, tuple[str | None, ...], tuple[str, ...]] | None:
    from evalcore.benchmarks.builtin import BUILTIN
    from evalcore.plan.spec import is_local

    if not spec.path or is_local(spec.path):
        return None
    task = BUILTIN.get(spec.task)
    configs: tuple[str | None, ...] = (spec.config,)
    if task is not None and task.hub is not None and task.hub.configs and not spec.config:
        configs = task.hub.configs
    splits = [spec.split]
    fewshot = spec.fewshot if spec.fewshot is not None else (task.fewshot if task is not None else 0)
    shot_split = spec.fewshot_split or (task.fewshot_split if task is not None else None)
    if fewshot and shot_split and not (task is not None and task.fewshot_samples):
        splits.append(shot_split)
    return spec.path, spec.revision or "main", configs, tuple(dict.fromkeys(splits))


def dataset_needs(plan) -> list[DatasetNeed]:
    """One entry per (repo, revision), configs and splits merged over the plan's datasets."""
    merged: dict[tuple[str, str], dict] = {}
    for d in plan.datasets:
        one = _one(d)
        if one is None:
            continue
        repo, rev, configs, splits = one
        m = merged.setdefault((repo, rev), {"parts": {}, "datasets": {}})
        m["parts"].update(dict.fromkeys((c, s) for c in configs for s in splits))
        m["datasets"][d.abbr] = None
    return [DatasetNeed(repo, rev, tuple(m["parts"]), tuple(m["datasets"])) for (repo, rev), m in merged.items()]


def describe(need: DatasetNeed) -> str:
    """`SaylorTwift/bbh@main  27 configs: boolean_expressions/test, ...  for: bbh`"""
    parts = [f"{c or 'default'}/{s}" for c, s in need.parts]
    n = len(need.configs)
    return f"{need.repo_id}@{need.revision}  {n} config{'s' if n > 1 else ''}: {', '.join(parts)}  for: {', '.join(need.datasets)}"


def missing_in(manifest, needs: list[DatasetNeed]) -> list[str]:
    """`repo config/split` for every needed split the bundle's manifest lacks."""
    entries = {e.repo_id: e for e in manifest.entries if e.repo_type == "dataset"}
    out = []
    for n in needs:
        e = entries.get(n.repo_id)
        have = (e.splits or {}) if e is not None else {}
        for cfg, split in n.parts:
            name = cfg if cfg is not None else (next(iter(have)) if len(have) == 1 else "default")
            if split not in have.get(name, {}):
                out.append(f"{n.repo_id} {name}/{split}")
    return out
