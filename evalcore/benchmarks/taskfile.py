"""lm-eval 0.4.x task files as benchmark definitions (the same `Task` the engine runs for every
benchmark). Semantics follow lm-evaluation-harness 0.4.13 (lm_eval/api/task.py ConfigurableTask,
lm_eval/config/task.py TaskConfig/FewshotConfig, lm_eval/api/samplers.py).

- `index(include_path)`: every task, group and tag the folders define;
- `bind(plan)`: each `task = "NAME"` dataset (or `--tasks NAME`) becomes one dataset per task
  (a group or tag expands to its tasks), with the data the task file names (hub repo + config,
  or local `data_files`: relative paths resolve against the current directory, then the YAML's
  folder, as lm-eval does);
- `task_from_spec(spec)`: the Task. Keys that do not change a score are accepted and recorded;
  a key that would change one and is not supported is an error naming the key and the file.

Over 400 lines on purpose: one file format read in one place; the index, the binding and the
Task conversion share the key tables at the top (what is used, recorded or refused).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from ..errors import TaskFileError
from .definition import FIXED_ON_BUILTIN, Task
from .jinja import render
from .rows import RowError
from .yamlfile import Function, load_yaml

# TaskConfig keys and what this reader does with them.
USED = {"task", "dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
        "fewshot_split", "process_docs", "doc_to_text", "doc_to_target", "doc_to_choice", "output_type",
        "target_delimiter", "fewshot_delimiter", "num_fewshot", "fewshot_config", "description",
        "generation_kwargs", "filter_list", "metric_list", "repeats", "gen_prefix", "tag", "group", "unsafe_code"}
RECORDED = {"metadata", "should_decontaminate", "doc_to_decontamination_query", "task_alias", "group_alias",
            "dataset_path_alias"}  # accepted, kept in the run, never change a score
NOT_SUPPORTED = {"process_results", "use_prompt", "doc_to_image", "doc_to_audio", "custom_dataset"}
LOCAL_BUILDERS = ("json", "csv", "parquet", "arrow")
OUTPUT_TYPES = {"multiple_choice": "ll", "generate_until": "gen", "loglikelihood": "loglik",
                "loglikelihood_rolling": "rolling"}
DEFAULT_METRICS = {"loglikelihood": ["perplexity", "acc"],
                   "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
                   "multiple_choice": ["acc", "acc_norm"], "generate_until": ["exact_match"]}
METRICS_OF = {"multiple_choice": {"acc", "acc_norm", "acc_bytes", "exact_match"},
              "generate_until": {"exact_match"}, "loglikelihood": {"perplexity", "acc"},
              "loglikelihood_rolling": {"word_perplexity", "byte_perplexity", "bits_per_byte"}}
AGGREGATION_OF = {"acc": "mean", "acc_norm": "mean", "acc_bytes": "mean", "exact_match": "mean",
                  "perplexity": "perplexity", "word_perplexity": "weighted_perplexity",
                  "byte_perplexity": "weighted_perplexity", "bits_per_byte": "bits_per_byte"}
EXACT_MATCH_KWARGS = {"ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore"}
FILTERS = {"regex", "take_first", "remove_whitespace", "lowercase", "uppercase", "map", "majority_vote"}
GEN_KWARGS_RECORDED = {"temperature", "top_p", "top_k"}  # no effect when do_sample is false


@dataclass(frozen=True)
class Entry:
    kind: str  # "task", "group", "tag"
    name: str
    path: Path | None
    members: tuple = ()  # group: its task entries (names, or inline dicts); tag: task names
    aggregate: tuple = ()  # group: aggregate_metric_list


def _yaml_files(folder: Path):
    for p in sorted(folder.rglob("*")):
        if p.suffix in (".yaml", ".yml") and p.is_file() and not any(part in ("__pycache__", ".ipynb_checkpoints")
                                                                     for part in p.parts):
            yield p


def index(include_path) -> dict[str, Entry]:
    """Every task, group and tag defined under the include folders (later folders do not
    silently shadow earlier ones: a name defined twice is an error)."""
    out: dict[str, Entry] = {}
    tags: dict[str, list[str]] = {}
    for folder in include_path:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise TaskFileError(f"include_path {root} is not a folder")
        for p in _yaml_files(root):
            cfg = load_yaml(p, resolve=False)
            task = cfg.get("task")
            if "group" in cfg and isinstance(task, list):
                _add(out, Entry("group", str(cfg["group"]), p, tuple(task), tuple(cfg.get("aggregate_metric_list") or ())), p)
            elif isinstance(task, str):
                _add(out, Entry("task", task, p), p)
                tag = cfg.get("tag")
                for t in [tag] if isinstance(tag, str) else (tag or []):
                    tags.setdefault(t, []).append(task)
                if isinstance(cfg.get("group"), str):  # lm-eval 0.4: a task's `group` key acts as a tag
                    tags.setdefault(cfg["group"], []).append(task)
    for t, members in tags.items():
        if t not in out:
            out[t] = Entry("tag", t, None, tuple(members))
    return out


def _add(out: dict, entry: Entry, p: Path) -> None:
    old = out.get(entry.name)
    if old is not None and old.path != p:
        raise TaskFileError(f"task name {entry.name!r} is defined twice: {old.path} and {p}")
    out[entry.name] = entry


def bind(plan):
    """The plan with every lm-eval task dataset bound to its file and data (groups expanded)."""
    from ..errors import PlanError

    if not any(d.task == "lmeval" for d in plan.datasets):
        return plan
    if not plan.run.include_path:
        raise PlanError("a dataset names an lm-eval task but no include_path is given",
                        hint="set [run] include_path = [\"tasks/\"] in the plan, or pass --include-path DIR")
    entries = index(plan.run.include_path)
    unknown = [d.abbr for d in plan.datasets if d.task == "lmeval" and not d.task_file and d.abbr not in entries]
    if unknown:
        import difflib

        near = {u: difflib.get_close_matches(u, list(entries), n=1, cutoff=0.0) for u in unknown}
        raise PlanError("unknown lm-eval task(s): " + ", ".join(
            f"{u!r}" + (f" (closest: {near[u][0]})" if near[u] else "") for u in unknown),
            hint=f"tasks found in {', '.join(plan.run.include_path)}: {', '.join(sorted(entries)) or 'none'}")
    out = []
    for d in plan.datasets:
        if d.task != "lmeval" or d.task_file:
            out.append(d)
            continue
        out += _expand(d, entries[d.abbr], entries, {})
    return replace(plan, datasets=tuple(out))


def _expand(d, entry: Entry, entries: dict, groups: dict) -> list:
    if entry.kind == "task":
        return [_bound(replace(d, abbr=entry.name), entry.path, groups)]
    if entry.kind == "tag":
        return [x for m in entry.members for x in _expand(d, entries[m], entries, groups)]
    groups = {**groups, entry.name: [dict(a) for a in entry.aggregate]}
    out = []
    for m in entry.members:
        if isinstance(m, dict):
            raise TaskFileError(f"{entry.path}: group {entry.name!r} lists an inline task config; "
                                "put it in its own task file and list its name")
        if m not in entries:
            raise TaskFileError(f"{entry.path}: group {entry.name!r} lists unknown task {m!r}")
        out += _expand(d, entries[m], entries, groups)
    return out


def _bound(d, path: Path, groups: dict):
    cfg = load_yaml(path, resolve=False)
    where = str(path)
    ds_path = cfg.get("dataset_path")
    if not isinstance(ds_path, str):
        raise TaskFileError(f"{where}: 'dataset_path' is missing")
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    data_files = kwargs.pop("data_files", None)
    revision = kwargs.pop("revision", None)
    kwargs.pop("trust_remote_code", None)  # dropped by lm-eval on datasets >= 4 too
    if kwargs:
        raise TaskFileError(f"{where}: dataset_kwargs {', '.join(sorted(kwargs))} not supported "
                            "(data_files, revision, trust_remote_code are)")
    split = cfg.get("test_split") or cfg.get("validation_split")
    if not split:
        raise TaskFileError(f"{where}: neither test_split nor validation_split is set (nothing to evaluate)")
    files = {}
    if ds_path in LOCAL_BUILDERS:
        if data_files is None:
            raise TaskFileError(f"{where}: dataset_path {ds_path!r} needs dataset_kwargs.data_files")
        if not isinstance(data_files, dict):
            data_files = {"train": data_files}
        for sp, f in data_files.items():
            if isinstance(f, list):
                if len(f) != 1:
                    raise TaskFileError(f"{where}: data_files.{sp} lists {len(f)} files; one file per split is supported")
                f = f[0]
            files[sp] = _local_file(str(f), path.parent, where)
        if split not in files:
            raise TaskFileError(f"{where}: split {split!r} is not in data_files ({', '.join(files)})")
        return replace(d, path=files[split], config=None, split=split, revision=None, task_file=str(path),
                       groups=MappingProxyType(groups), data_files=MappingProxyType(files))
    if data_files is not None:
        raise TaskFileError(f"{where}: data_files with a hub dataset_path is not supported")
    return replace(d, path=ds_path, config=cfg.get("dataset_name"), split=split, revision=revision,
                   task_file=str(path), groups=MappingProxyType(groups))


def _local_file(name: str, base: Path, where: str) -> str:
    p = Path(name).expanduser()
    for candidate in ((p,) if p.is_absolute() else (Path.cwd() / p, base / p)):
        if candidate.is_file():
            return str(candidate.resolve())
    raise TaskFileError(f"{where}: data file {name!r} found neither from the current directory nor next to the task file")


# -- the Task of one task file ---------------------------------------------------------------------

def _field_or_template(value, row: dict, what: str, has_choices: bool, target: bool = False):
    """lm-eval doc_to_text/doc_to_target: a field name, else a Jinja template whose digit output
    is an index when there are choices (and a list literal, for targets)."""
    if value in row:
        return row[value]
    text = render(value, row, what)
    if text.isdigit() and has_choices:
        return ast.literal_eval(text)
    if target and len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return text
    return text


class _Doc:
    """One doc_to_* definition as a callable over a row, with a fingerprint."""

    def __init__(self, value, what: str, has_choices: bool, kind: str) -> None:
        self.value, self.what, self.has_choices, self.kind = value, what, has_choices, kind
        self.fingerprint = f"{kind}:{value.fingerprint if isinstance(value, Function) else repr(value)}"

    def __call__(self, row: dict):
        v = self.value
        if isinstance(v, Function):
            return v(row)
        if self.kind == "choice":
            if isinstance(v, str):
                if v in row:
                    return row[v]
                text = render(v, row, self.what)
                try:
                    return ast.literal_eval(text)
                except (SyntaxError, ValueError):
                    raise RowError(self.what, f"template renders {text!r}, not a list") from None
            if isinstance(v, list):
                return v
            if isinstance(v, dict):
                return list(v.values())
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, list) and self.kind == "target":
            return v
        if isinstance(v, str):
            return _field_or_template(v, row, self.what, self.has_choices, target=self.kind == "target")
        raise RowError(self.what, f"unsupported definition {v!r}")


class _ProcessDocs:
    """lm-eval's process_docs receives and returns a `datasets.Dataset`."""

    def __init__(self, fn: Function) -> None:
        self.fn = fn
        self.fingerprint = f"process_docs:{fn.fingerprint}"

    def __call__(self, rows: list[dict]) -> list[dict]:
        import datasets

        out = self.fn(datasets.Dataset.from_list(rows))
        return out.to_list() if hasattr(out, "to_list") else list(out)


def task_from_spec(spec) -> Task:
    """The Task of a bound task-file dataset, with the plan's overrides: `fewshot` (as lm-eval's
    --num_fewshot, 0 included), `max_out_len` and `stop` (generation); any key that would
    reshape the prompt is refused."""
    from ..errors import PlanError

    path = Path(spec.task_file)
    task = task_from_config(load_yaml(path), path, spec)
    where = f"dataset {spec.abbr} (lm-eval task file {path})"
    for key in FIXED_ON_BUILTIN:
        if getattr(spec, key) is not None:
            raise PlanError(f"{where}: '{key}' cannot be changed on a task file; edit the file instead")
    kw: dict = {}
    if spec.fewshot is not None:
        if spec.fewshot < 0:
            raise PlanError(f"{where}: 'fewshot' must be >= 0")
        kw["fewshot"] = spec.fewshot
    for key in ("max_out_len", "stop"):
        value = getattr(spec, key)
        if value is None:
            continue
        if task.mode != "gen":
            raise PlanError(f"{where}: '{key}' applies to generate_until tasks only")
        if key == "max_out_len" and value < 1:
            raise PlanError(f"{where}: 'max_out_len' must be >= 1")
        kw[key] = tuple(value) if key == "stop" else value
    if spec.fewshot_split is not None:
        raise PlanError(f"{where}: 'fewshot_split' cannot be changed on a task file; edit the file instead")
    return replace(task, **kw) if kw else task


def _err(path: Path, key: str, why: str) -> TaskFileError:
    return TaskFileError(f"{path}: key '{key}' {why}")


def task_from_config(cfg: dict, path: Path, spec=None) -> Task:
    unknown = sorted(set(cfg) - USED - RECORDED - NOT_SUPPORTED)
    for key in sorted(set(cfg) & NOT_SUPPORTED):
        if cfg[key] is not None:
            raise _err(path, key, "would change the score and is not supported by evalcore")
    if unknown:
        raise _err(path, unknown[0], "is not an lm-eval 0.4 task key" + (f" (also: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))
    name = cfg["task"]
    otype = cfg.get("output_type") or "generate_until"
    if otype not in OUTPUT_TYPES:
        raise _err(path, "output_type", f"{otype!r} is not one of {', '.join(OUTPUT_TYPES)}")
    if (cfg.get("repeats") or 1) != 1:
        raise _err(path, "repeats", "other than 1 is not supported (greedy decoding only)")
    if cfg.get("gen_prefix") is not None:
        raise _err(path, "gen_prefix", "would change the score and is not supported by evalcore")
    has_choices = cfg.get("doc_to_choice") is not None
    td = cfg.get("target_delimiter", " ")
    fd = cfg.get("fewshot_delimiter", "\n\n")
    text = _Doc(cfg.get("doc_to_text"), "doc_to_text", has_choices, "text")
    target = _Doc(cfg.get("doc_to_target"), "doc_to_target", has_choices, "target")
    choices = _Doc(cfg["doc_to_choice"], "doc_to_choice", True, "choice") if has_choices else None
    desc = cfg.get("description") or ""
    description = _Doc(desc, "description", False, "text") if desc else None
    process_docs = cfg.get("process_docs")
    if process_docs is not None and not isinstance(process_docs, Function):
        raise _err(path, "process_docs", "must be a !function")
    # few-shot (TaskConfig.__post_init__: fewshot_config inherits the task's settings)
    fs = dict(cfg.get("fewshot_config") or {})
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix", "process_docs"):
        if key in fs and fs[key] != cfg.get(key):
            raise _err(path, f"fewshot_config.{key}", "differing from the task's is not supported")
    for key, own in (("target_delimiter", td), ("fewshot_delimiter", fd)):
        if key in fs and fs[key] != own:
            raise _err(path, f"fewshot_config.{key}", "differing from the task's is not supported")
    extra_fs = set(fs) - {"sampler", "split", "samples", "fewshot_indices", "doc_to_text", "doc_to_target",
                          "doc_to_choice", "gen_prefix", "process_docs", "target_delimiter", "fewshot_delimiter"}
    if extra_fs:
        raise _err(path, f"fewshot_config.{sorted(extra_fs)[0]}", "is not a fewshot_config key")
    sampler = {"default": "random", "first_n": "first_n"}.get(fs.get("sampler", "default"))
    if sampler is None:
        raise _err(path, "fewshot_config.sampler", f"{fs['sampler']!r} is not supported (default, first_n)")
    num_fewshot = cfg.get("num_fewshot") or 0
    fs_split = fs.get("split", cfg.get("fewshot_split"))
    samples = fs.get("samples")
    if isinstance(samples, Function):
        samples = samples()
    if samples is not None and (not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples)):
        raise _err(path, "fewshot_config.samples", "must be a list of rows or a !function returning one")
    pool_split = fs_split or (None if samples is not None and fs_split is None else
                              cfg.get("training_split") or cfg.get("validation_split") or cfg.get("test_split"))
    if fs.get("fewshot_indices") is not None:
        raise _err(path, "fewshot_config.fewshot_indices", "is not supported")
    eval_split = cfg.get("test_split") or cfg.get("validation_split")
    # generation
    stop: tuple[str, ...] = ()
    max_out = None
    if otype == "generate_until":
        gk = dict(cfg.get("generation_kwargs") or {"until": [fd], "do_sample": False})
        until = gk.pop("until", [fd])
        stop = tuple([until] if isinstance(until, str) else until)
        max_out = int(gk.pop("max_gen_toks", 256))
        if gk.pop("do_sample", False):
            raise _err(path, "generation_kwargs.do_sample", "true is not supported (greedy decoding only)")
        for key in list(gk):
            if key in GEN_KWARGS_RECORDED:
                gk.pop(key)
        if gk:
            raise _err(path, f"generation_kwargs.{sorted(gk)[0]}", "would change the generation and is not supported")
    elif cfg.get("generation_kwargs"):
        raise _err(path, "generation_kwargs", f"applies to generate_until, not {otype}")
    scoring = {"output_type": otype, "metrics": _metrics(cfg, otype, path), "filters": _filters(cfg, otype, path)}
    recorded = {k: _plain(cfg[k]) for k in sorted(set(cfg) & RECORDED)}
    return Task(
        name=name, mode=OUTPUT_TYPES[otype], text=text, target=target, choices=choices, description=description,
        target_delimiter=td, fewshot=int(num_fewshot), fewshot_split=pool_split if pool_split != eval_split else None,
        fewshot_delimiter=fd, sampler=sampler, fewshot_exclude_self=fs_split == cfg.get("test_split"),
        fewshot_samples=tuple(samples) if samples is not None and fs_split is None else (),
        stop=stop, max_out_len=max_out, metric="lmeval",
        groups=tuple((spec.groups or {}).keys()) if spec is not None else (),
        scoring=MappingProxyType(scoring), source=str(path), recorded=MappingProxyType(recorded),
        process_docs=_ProcessDocs(process_docs) if process_docs is not None else None,
        needs_execution=bool(cfg.get("unsafe_code")),
        extra=(repr(_plain(cfg)),),
    )


def _metrics(cfg: dict, otype: str, path: Path) -> list[dict]:
    raw = cfg.get("metric_list")
    if raw is None:
        return [{"metric": m} for m in DEFAULT_METRICS[otype]]
    out = []
    for m in raw:
        name = m.get("metric") if isinstance(m, dict) else None
        if not isinstance(name, str):
            raise _err(path, "metric_list", "entries need a metric name")
        if name not in METRICS_OF[otype]:
            raise _err(path, f"metric_list.{name}", f"is not supported for {otype} "
                                                   f"(supported: {', '.join(sorted(METRICS_OF[otype]))})")
        agg = m.get("aggregation", AGGREGATION_OF[name])
        if agg != AGGREGATION_OF[name]:
            raise _err(path, f"metric_list.{name}.aggregation", f"{agg!r} is not supported ({AGGREGATION_OF[name]})")
        kwargs = {k: v for k, v in m.items() if k not in ("metric", "aggregation", "higher_is_better", "hf_evaluate")}
        allowed = EXACT_MATCH_KWARGS if (name == "exact_match" and otype == "generate_until") else set()
        bad = sorted(set(kwargs) - allowed)
        if bad:
            raise _err(path, f"metric_list.{name}.{bad[0]}", "would change the score and is not supported")
        out.append({"metric": name, **kwargs})
    return out


def _filters(cfg: dict, otype: str, path: Path) -> list[dict]:
    raw = cfg.get("filter_list")
    if raw is None:
        return [{"name": "none", "filter": [{"function": "take_first"}]}]
    if otype != "generate_until":
        raise _err(path, "filter_list", f"is only supported for generate_until (not {otype})")
    out = []
    for f in raw:
        steps = []
        for step in f.get("filter", []):
            fn = step.get("function")
            if fn not in FILTERS:
                raise _err(path, f"filter_list.{f.get('name')}.{fn}", f"filter not supported ({', '.join(sorted(FILTERS))})")
            steps.append(dict(step))
        out.append({"name": f["name"], "filter": steps})
    return out


def _plain(v):
    if isinstance(v, Function):
        return repr(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
