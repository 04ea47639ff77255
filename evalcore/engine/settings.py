"""The effective settings of each model x dataset: what actually ran, after flags, the plan, the
task's own values and the defaults were combined, and what the host ignored. Recorded in the
ledger (each partition's `spec_json`) when a run starts and shown by `evalcore report`.

Pure apart from reading installed package versions (package metadata: nothing is imported).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from evalcore.backends.model import GPU_ONLY_KWARGS
from evalcore.backends.registry import backend_kind


def library_versions(backend: str) -> dict[str, str | None]:
    """Installed versions (None: not installed) of the product and of what `backend` runs on
    (its BackendKind's libraries; part of every partition key)."""
    return backend_kind(backend).versions()


def effective_settings(model, dataset, task, *, max_out_len: int | None, limit: int | None,
                       n_devices: int, host_gpus: bool, workers_per_gpu: int = 1) -> dict:
    """One model x dataset's settings as they run. `notes` lists every setting the host or the
    task does not use, in words (nothing is ignored silently). `n_devices`: the GPUs this host
    sees; `host_gpus`: whether the run's workers get them (false: the runner's nodes decide)."""
    gen = task.mode == "gen"
    notes = []
    if model.chat_template and not gen:
        notes.append("chat_template is not used for a log-likelihood dataset (choices are scored on the raw prompt)")
    on_cpu = n_devices == 0 and host_gpus
    if on_cpu and backend_kind(model.backend).uses_gpu:
        ignored = [f"num_gpus={model.num_gpus}"] if model.num_gpus else []
        ignored += [f"{k}={model.model_kwargs[k]!r}" for k in GPU_ONLY_KWARGS if k in model.model_kwargs]
        if model.batch_size == "auto":
            ignored.append("batch_size='auto' (8 on the CPU)")
        if workers_per_gpu != 1:
            ignored.append(f"max_workers_per_gpu={workers_per_gpu}")
        if ignored:
            notes.append("no GPU on this host: ran on the CPU; ignored " + ", ".join(ignored))
    return {
        "mode": task.mode,
        "fewshot": task.fewshot,
        "max_out_len": max_out_len if gen else None,
        "stop": list(task.stop) if gen else None,
        "max_seq_len": model.max_seq_len if model.max_seq_len is not None else "model's own",
        "batch_size": 8 if (on_cpu and model.batch_size == "auto") else model.batch_size,
        "batch_padding": model.batch_padding,
        "dtype": model.dtype,
        "chat_template": bool(model.chat_template and gen),
        "metric": task.metric,
        "prompt_version": task.version,
        "limit": limit,
        "num_gpus": 0 if on_cpu else model.num_gpus,
        "backend": model.backend,
        "backend_options": dict(model.backend_options),
        "versions": library_versions(model.backend),
        "notes": notes,
    }


FALLBACKS = "logs/fallbacks.jsonl"


ANY = ("*", "*")  # fallbacks_of: a note for every model x dataset


def record_fallback(run_dir: Path, model: str, dataset: str, kind: str, reason: str, worker: str) -> None:
    """One line per fallback a worker took (a single short append: whole lines, whoever writes)."""
    line = json.dumps({"model": model, "dataset": dataset, "kind": kind, "reason": reason, "worker": worker,
                       "at": time.time()}, ensure_ascii=False)
    with open(Path(run_dir) / FALLBACKS, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def fallbacks_of(run_dir: Path) -> dict[tuple[str, str], list[str]]:
    """(model, dataset) -> the fallbacks taken, in words (each once). A record that cannot be
    read is not dropped: it is said under ("*", "*"), which every model x dataset shows (a
    fallback nobody can see would be the worst kind)."""
    out: dict[tuple[str, str], list[str]] = {}
    path = Path(run_dir) / FALLBACKS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    except (OSError, UnicodeDecodeError) as exc:
        return {ANY: [f"fallbacks unknown: {path} cannot be read ({exc})"]}
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            rec["kind"], rec["reason"], rec["model"], rec["dataset"]  # noqa: B018 (all four are needed)
        except (ValueError, KeyError, TypeError):
            out.setdefault(ANY, []).append(f"fallbacks unknown: line {n} of {path} is unreadable")
            continue
        text = f"fallback: {rec['kind']} ({rec['reason']})"
        seen = out.setdefault((rec["model"], rec["dataset"]), [])
        if text not in seen:
            seen.append(text)
    return out


def settings_of(partitions: Iterable[Mapping], run_dir: Path | None = None) -> dict[tuple[str, str], dict]:
    """(model, dataset) -> settings, read back from the ledger's partitions; with `run_dir`, the
    fallbacks its workers took are added to the notes."""
    out: dict[tuple[str, str], dict] = {}
    for p in partitions:
        key = (p["model_key"], p["dataset_key"])
        if key not in out:
            try:
                spec = json.loads(p.get("spec_json") or "{}")
            except ValueError:
                spec = {}
            if spec:
                out[key] = spec
    if run_dir is not None:
        for key, notes in fallbacks_of(run_dir).items():
            for k in (list(out) if key == ANY else [key] if key in out else []):
                out[k] = {**out[k], "notes": [*out[k].get("notes", []), *notes]}
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def settings_markdown(settings: Mapping[tuple[str, str], dict]) -> str:
    """A '## Settings' section: one row per model x dataset, then the notes."""
    if not settings:
        return ""
    cols = ("mode", "fewshot", "max_out_len", "stop", "max_seq_len", "batch_size", "dtype", "chat_template",
            "metric", "prompt_version")
    lines = ["## Settings", "", "| model | dataset | " + " | ".join(cols) + " |",
             "|" + "---|" * (len(cols) + 2)]
    for (m, d), s in settings.items():
        lines.append(f"| {m} | {d} | " + " | ".join(_cell(s.get(c)).replace("|", "\\|") for c in cols) + " |")
    versions = {json.dumps(s.get("versions", {}), sort_keys=True) for s in settings.values()}
    for v in sorted(versions):
        lines += ["", "Libraries: " + ", ".join(f"{k} {x or 'not installed'}" for k, x in json.loads(v).items())]
    notes = [(m, d, n) for (m, d), s in settings.items() for n in s.get("notes", [])]
    if notes:
        lines += ["", "Notes:"] + [f"- {m} x {d}: {n}" for m, d, n in notes]
    return "\n".join(lines)


__all__ = ["library_versions", "effective_settings", "settings_of", "settings_markdown"]
