"""scripts/gpu_check.py: the HF backend against a per-request reference on a random-weight
Llama built in the script. On CPU with a small model always; on CUDA (bf16 and float32, about
1B parameters) only where a GPU is visible: skipped cleanly without one."""

from __future__ import annotations

import json

import pytest

from scripts import gpu_check

torch = pytest.importorskip("torch")


def _check(result: dict, tol: dict[str, float]) -> None:
    assert result["rows"]
    for row in result["rows"]:
        for path in ("prefix", "packed", "plain"):
            assert row[path]["max_abs_ll_diff"] <= tol[row["dtype"]], (row["dtype"], path, row[path])
            assert row[path]["tokens_per_s"] > 0
        assert row["prefix"]["paths"]["prefix_reuse"] == "on", row["prefix"]["paths"]
        assert row["prefix"]["tokens_run"] < row["plain"]["tokens_run"]
        assert row["generation"]["identical"] is True and row["generation"]["mode"] == "refill"


def test_gpu_check_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--size", "small", "--requests", "3", "--threads", "1",
                           "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and [r["dtype"] for r in result["rows"]] == ["float32"]
    _check(result, {"float32": 1e-4})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_gpu_check_on_cuda(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cuda", "--size", "small", "--requests", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["dtype"] for r in result["rows"]] == ["bfloat16", "float32"]
    _check(result, {"bfloat16": 0.5, "float32": 1e-3})
