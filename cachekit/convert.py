"""Dataset conversion on the online host: any supported repo or local folder -> Parquet per
config and split. Offline hosts then read plain Parquet: no loading scripts, no Arrow cache that
another `datasets` version cannot read.

Layout rules, in order:
1. a README.md whose YAML declares `configs:` -> the `datasets` library's own reading of the repo;
2. otherwise data files (.jsonl .json .csv .parquet, optionally .gz) at the top are one config,
   "default", with the split named by the file name (`validation.jsonl`, `train-00000-of-00002.parquet`);
3. each subfolder holding data files is a config named after the folder, its files (or split
   subfolders, as in the hub's `refs/convert/parquet`) giving the splits.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from .errors import NotFoundError, UsageError

DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tsv": "csv"}
_SHARD = re.compile(r"^(?P<split>.+?)(-\d{5}-of-\d{5}|-\d+)?$")


def _builder(path: Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return DATA_SUFFIXES.get(suffixes[-1]) if suffixes else None


METADATA_FILES = {"dataset_infos.json", "dataset_info.json"}  # written beside loading scripts, not data


def is_data_file(path: Path) -> bool:
    """A file the converter reads as data (by suffix; the hub's metadata JSON files excluded)."""
    return path.name not in METADATA_FILES and _builder(path) is not None


def _split_name(path: Path) -> str:
    stem = path.name.split(".")[0]
    return _SHARD.match(stem).group("split") if stem else "train"


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _builder(p))


def layout(root: Path) -> dict[str, dict[str, list[Path]]]:
    """config -> split -> data files, by rules 2 and 3 above (pure apart from listing folders)."""
    if root.is_file():
        if not _builder(root):
            raise UsageError(f"{root}: not a data file (.jsonl, .json, .csv, .tsv, .parquet)")
        return {"default": {_split_name(root): [root]}}
    out: dict[str, dict[str, list[Path]]] = {}
    top = _data_files(root)
    if top:
        out["default"] = _by_split(top)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        splits = _by_split(_data_files(sub))
        for split_dir in sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = _data_files(split_dir)
            if files:
                splits.setdefault(split_dir.name, []).extend(files)
        if splits:
            out[sub.name] = splits
    return out


def _by_split(files: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        groups[_split_name(f)].append(f)
    return dict(groups)


def _declares_configs(root: Path) -> bool:
    readme = root / "README.md"
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    return re.search(r"^configs:", front, re.M) is not None


def to_parquet(root: Path, out_dir: Path, cache_dir: Path) -> dict[str, dict[str, tuple[Path, int]]]:
    """Convert a dataset repo snapshot or local folder/file; return config -> split -> (file, rows)."""
    import datasets

    datasets.disable_progress_bars()
    if root.is_dir() and any(p.suffix == ".py" for p in root.iterdir() if p.is_file()) and not _declares_configs(root) \
            and not layout(root):
        raise UsageError(f"{root.name}: dataset loading scripts are not supported",
                         hint="prefetch the hub's converted Parquet instead: --dataset ORG/NAME@refs/convert/parquet")
    result: dict[str, dict[str, tuple[Path, int]]] = {}
    if root.is_dir() and _declares_configs(root):
        for config in datasets.get_dataset_config_names(str(root)):
            dd = datasets.load_dataset(str(root), config, cache_dir=str(cache_dir))
            result[config] = {split: _write(ds, out_dir / config / f"{split}.parquet") for split, ds in dd.items()}
        return result
    found = layout(root)
    if not found:
        raise NotFoundError(f"{root}: no data files found (.jsonl, .json, .csv, .tsv, .parquet)")
    for config, splits in found.items():
        result[config] = {}
        for split, files in splits.items():
            builder = _builder(files[0])
            kwargs = {"delimiter": "\t"} if files[0].name.endswith((".tsv", ".tsv.gz")) else {}
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                       cache_dir=str(cache_dir), **kwargs)
            result[config][split] = _write(ds, out_dir / config / f"{split}.parquet")
    return result


def _write(ds, path: Path) -> tuple[Path, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path, ds.num_rows
