"""Finding and reading a plan's datasets offline: installed hub datasets through the cachekit
store index, or a local file. pyarrow is imported only when Parquet is read."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from cachekit.checksum import sha256_file
from cachekit.errors import CachekitError
from cachekit.index import Index

from .errors import MissingArtefact, PlanError
from .plan import DatasetSpec, is_local


@dataclass(frozen=True)
class DataRef:
    """One concrete split: where it is and the hash of its bytes (part of every answer's key)."""

    path: Path
    sha256: str
    source: str  # "repo@commit config/split" or the local path


def resolve(spec: DatasetSpec, split: str | None = None, index: Index | None = None) -> DataRef:
    split = split or spec.split
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
    """All rows of a split, as dicts, in file order (the row's position is its sample index)."""
    p = ref.path
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


def count_rows(ref: DataRef) -> int:
    if ref.path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_metadata(ref.path).num_rows
    return len(load_rows(ref))


__all__ = ["DataRef", "resolve", "load_rows", "count_rows"]
