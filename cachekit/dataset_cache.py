"""Dataset entries where other tools look for them, besides cachekit's own store:

- the hub cache layout, `datasets--org--name/snapshots/<commit>/<config>/<split>.parquet` plus a
  README.md whose `configs:` header maps each config and split to its file, as the hub serves a
  Parquet repo (`readme`);
- the `datasets` Arrow cache, `$HF_DATASETS_CACHE/org___name/<config>/0.0.0/<commit>/`, which is
  what `datasets.load_dataset(repo_id, config, split=...)` reads with HF_HUB_OFFLINE=1: datasets
  5 never reads the hub cache when offline, only this cache. Import prepares it on the offline
  host, with the installed `datasets` itself (its Parquet builder), from the same Parquet files
  (`prepare_arrow`), so the Arrow format always matches the library that reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import manifest as mf

ARROW_VERSION = "0.0.0"  # the version datasets gives a builder made from data files


def readme(e: mf.Entry, only: str | None = None) -> bytes:
    """The dataset card a Parquet repo of these configs and splits would have (YAML header);
    `only`: the card of that one config (what the Arrow build of one config reads)."""
    import yaml

    configs = [{"config_name": cfg,
                "data_files": [{"split": split, "path": info["path"]} for split, info in sorted(by_split.items())]}
               for cfg, by_split in sorted(e.splits.items()) if only is None or cfg == only]
    header: dict = {"configs": configs}
    if e.license:
        header["license"] = e.license
    body = (f"# {e.repo_id}\n\nParquet files of {e.repo_id} at commit {e.commit}, "
            f"installed by cachekit (one file per config and split).\n")
    return ("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body).encode()


def dataset_dir_name(repo_id: str) -> str:
    """`org___name` (snake-cased name), as datasets names a hub dataset's cache folder."""
    from datasets.naming import camelcase_to_snakecase

    org, _, name = repo_id.rpartition("/")
    return f"{org}___{camelcase_to_snakecase(name)}" if org else camelcase_to_snakecase(name)


def arrow_dir(cache_root: Path, repo_id: str, config: str, commit: str) -> Path:
    return cache_root / dataset_dir_name(repo_id) / config / ARROW_VERSION / commit


def prepare_arrow(e: mf.Entry, files: dict[str, Path], config: str, scratch: Path) -> Path:
    """Build the Arrow cache of one config in `scratch` from the Parquet `files` (manifest path
    -> file on disk); return the folder to move to `arrow_dir(...)`. Nothing outside `scratch`
    is written (datasets' lock files and temp folders stay in it)."""
    import datasets
    from datasets.load import dataset_module_factory, get_dataset_builder_class
    from datasets.naming import camelcase_to_snakecase

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    snapshot = scratch / "snapshot"
    for rel, path in files.items():
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, snapshot / rel)
    # the card of this config alone: datasets resolves the data files of every config it lists,
    # and the scratch snapshot holds only this one's
    (snapshot / "README.md").write_bytes(readme(e, only=config))
    module = dataset_module_factory(str(snapshot))
    name = camelcase_to_snakecase(e.repo_id.rpartition("/")[2])
    builder_cls = get_dataset_builder_class(module, dataset_name=name)
    kwargs = {**module.builder_kwargs, "dataset_name": name}
    builder = builder_cls(cache_dir=str(scratch / "cache"), config_name=config, hash=e.commit, **kwargs)
    builder.download_and_prepare()
    return Path(builder.cache_dir)
