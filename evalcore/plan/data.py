"""Finding and reading a plan's datasets offline: installed hub datasets through the cachekit
store index, or a local file. pyarrow is imported only when Parquet is read."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from cachekit.checksum import sha256_file
from cachekit.errors import CachekitError
from cachekit.index import Index
from evalcore.benchmarks.definition import SUBSET_FIELD
from evalcore.errors import MissingArtefact, PlanError
from evalcore.plan.spec import DatasetSpec, is_local


@dataclass(frozen=True)
class DataRef:
    """One concrete split: where it is and the hash of its bytes (part of every answer's key)."""

    path: Path
    sha256: str
    source: str  # "repo@commit config/split" or the local path
    parts: tuple[tuple[str, str, str], ...] = ()  # multi-config: (config, path, sha256) read in turn


def resolve(spec: DatasetSpec, split: str | None = None, index: Index | None = None,
            configs: tuple[str, ...] = ()) -> DataRef:
    """The file of one split. A benchmark spanning several configs of one hub repo (`configs`,
    when the plan names no config) resolves to all of them; every missing one is named."""
    split = split or spec.split
    if configs and not spec.config and not is_local(spec.path):
        index = index or Index()
        refs, missing = [], []
        for cfg in configs:
            try:
                refs.append((cfg, resolve(replace(spec, config=cfg), split, index)))
            except MissingArtefact as exc:
                if "has no split" not in str(exc):
                    raise  # the repo itself is missing: one message, not one per config
                missing.append(cfg)
        if missing:
            raise MissingArtefact(f"dataset {spec.abbr}: {spec.path} lacks {len(missing)} of its {len(configs)} "
                                  f"configs ({split}): {', '.join(missing[:30])}")
        digest = hashlib.sha256("".join(f"{c}:{r.sha256}\n" for c, r in refs).encode()).hexdigest()
        source = refs[0][1].source.split(" ")[0] + f" {len(refs)} configs/{split}"
        return DataRef(refs[0][1].path, digest, source, tuple((c, str(r.path), r.sha256) for c, r in refs))
    if spec.data_files:  # an lm-eval task file's local data_files: one file per split
        if split not in spec.data_files:
            raise MissingArtefact(f"dataset {spec.abbr}: the task file has no data file for split {split!r} "
                                  f"(data_files: {', '.join(spec.data_files)})")
        p = Path(spec.data_files[split])
        if not p.is_file():
            raise MissingArtefact(f"dataset {spec.abbr}: local file {p} does not exist")
        return DataRef(p, sha256_file(p), str(p))
    if is_local(spec.path):
        p = Path(spec.path).expanduser()
        if not p.is_file():
            raise MissingArtefact(f"dataset {spec.abbr}: local file {p} does not exist")
        return DataRef(p, sha256_file(p), str(p))
    index = index or Index()
    try:
        info = index.split_info(spec.path, spec.config, split, spec.revision)
    except CachekitError as exc:
        raise MissingArtefact(f"dataset {spec.abbr}: {exc}", hint=exc.hint) from None
    return DataRef(info.path, info.sha256, f"{spec.path}@{info.commit[:12]} {info.config}/{split}")


def load_rows(ref: DataRef) -> list[dict]:
    """All rows of a split, as dicts, in file order (the row's position is its sample index).
    A multi-config split is its configs' rows one after the other, each tagged with its config."""
    if ref.parts:
        rows = []
        for cfg, path, _sha in ref.parts:
            rows += [{**r, SUBSET_FIELD: cfg} for r in _load_file(Path(path))]
        return rows
    return _load_file(ref.path)


def _load_file(p: Path) -> list[dict]:
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    opener = gzip.open if p.name.endswith(".gz") else open
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        if name.endswith(".jsonl"):
            with opener(p, "rt", encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if name.endswith(".json"):
            with opener(p, "rt", encoding="utf-8") as f:
                doc = json.load(f)
            if isinstance(doc, dict) and isinstance(doc.get("examples"), list):
                return doc["examples"]
            if isinstance(doc, list):
                return doc
            raise PlanError(f"{p}: expected a JSON list of rows or an object with 'examples'")
        if name.endswith((".csv", ".tsv")):
            with opener(p, "rt", encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ","))
    except (ValueError, OSError) as exc:
        raise PlanError(f"cannot read dataset file {p}: {exc}") from None
    raise PlanError(f"{p}: unsupported data file (.parquet, .jsonl, .json, .csv, .tsv, optionally .gz)")


__all__ = ["DataRef", "resolve", "load_rows"]
