"""Run the lm-eval CLI unchanged, timing its phases: `python lmeval_timed.py run --model hf ...`.

Same arguments as `lm_eval`; it only wraps HFLM's `__init__` (model + tokenizer load),
`loglikelihood` (tokenising + scoring every log-likelihood request) and `generate_until` with a
wall-clock timer, and writes the totals as JSON to the file named by $XC_TIMING_JSON when the
process exits. Nothing lm-eval computes is changed.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import time

T0 = time.perf_counter()
PHASES: dict[str, float] = {}


def _timed(cls, name: str, key: str) -> None:
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES[key] = round(PHASES.get(key, 0.0) + time.perf_counter() - t, 3)

    setattr(cls, name, wrapper)


def _write() -> None:
    path = os.environ.get("XC_TIMING_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({**PHASES, "process_s": round(time.perf_counter() - T0, 3)}, f, indent=2)


def main() -> None:
    from lm_eval.models.huggingface import HFLM

    PHASES["import_s"] = round(time.perf_counter() - T0, 3)
    _timed(HFLM, "__init__", "model_load_s")
    _timed(HFLM, "loglikelihood", "loglikelihood_s")
    _timed(HFLM, "generate_until", "generate_until_s")
    atexit.register(_write)
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
