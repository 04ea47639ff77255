"""`evaluate` metrics offline: `cachekit prefetch --metric accuracy` bundles the metric's space;
after import, `evaluate.load("accuracy")` works with the hub unreachable, and the metric's own
pip requirements are in the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, clean_env, run_cli
from tests.test_prefetch import manifest_of

ACCURACY = b'''"""Accuracy: the fraction of predictions equal to their references."""
import datasets
import evaluate

from .helpers import fraction


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="accuracy", citation="", inputs_description="predictions, references",
            features=datasets.Features({"predictions": datasets.Value("int32"),
                                        "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": fraction(sum(p == r for p, r in zip(predictions, references)), len(references))}
'''
HELPERS = b"def fraction(a, b):\n    return a / b\n"

LOAD = r"""
import json
import evaluate
m = evaluate.load("accuracy")
print(json.dumps(m.compute(predictions=[1, 0, 1], references=[1, 1, 1])))
"""


def test_metric_loads_offline_after_import(hub_server, tmp_path):
    hub_server.commit("evaluate-metric/accuracy", {
        "accuracy.py": ACCURACY, "helpers.py": HELPERS, "app.py": b"import gradio\n",
        "requirements.txt": b"# the metric's own needs\nscikit-learn\n-e .\n", "README.md": b"# Accuracy\n",
    }, repo_type="space")
    online = clean_env(HF_HOME=str(tmp_path / "online"), HF_ENDPOINT=hub_server.url)
    out = tmp_path / "metrics.tar"
    r = run_cli("cachekit", "prefetch", "--metric", "accuracy", "--space", "evaluate-metric/accuracy",
                "--out", out, env=online)
    assert r.returncode == 0, r.stderr
    (e,) = manifest_of(out).entries  # --metric accuracy and --space evaluate-metric/accuracy are one
    assert (e.kind, e.repo_type, e.repo_id) == ("metric", "space", "evaluate-metric/accuracy")
    assert e.requirements == ("scikit-learn",)

    offline = clean_env(HF_HOME=str(tmp_path / "offline"), HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    r = run_cli("cachekit", "import", out, env=offline)
    assert r.returncode == 0, r.stderr
    assert "evaluate module evaluate-metric/accuracy: new" in r.stdout
    assert "the metric needs: scikit-learn" in r.stdout
    assert not list(Path(offline["HF_HOME"]).rglob(".cachekit-staging-*"))
    r = subprocess.run([sys.executable, "-c", LOAD], env=offline, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"accuracy": 2 / 3}
    r = run_cli("cachekit", "import", out, env=offline)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout
