"""`evalcore report --format html`: one self-contained file, rendered in headless Chromium (the
Debian package; .ci/run installs it): the summary table, charts (bars, a heat map for MMLU's
subjects, line charts for few-shot settings and one model family) and the sample browser are
drawn, and the page asks for nothing over the network (static check of the HTML, plus Chromium's
net log with every request sent to a dead proxy). The screenshot is kept in the test's tmp dir."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARC_JSONL, ROOT, clean_env, run_cli, tree_state
from tests.test_engine import run_dir_of, scripted, write_plan

BLINK_LOADER = 101845102  # traffic annotation of requests a page makes (blink_resource_loader)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("EVALCORE_TEST_BROWSER") == "1":
        pytest.fail("no Chromium on PATH, but EVALCORE_TEST_BROWSER=1 (CI): scripts/install_chromium.sh failed?")
    pytest.skip("no Chromium on PATH and it could not be installed here (bash scripts/install_chromium.sh)")


def browse(page: Path, work: Path, *extra: str) -> tuple[str, list[str]]:
    """(stdout, page-made network requests) of headless Chromium on `page`, with every request
    sent to a dead loopback proxy and a net log."""
    netlog = work / f"net-{len(list(work.glob('net-*')))}.json"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--disable-background-networking", "--disable-component-update", f"--user-data-dir={work / 'profile'}",
           f"--log-net-log={netlog}", "--net-log-capture-mode=Everything", "--virtual-time-budget=5000",
           *extra, page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, page_requests(json.loads(netlog.read_text()))


def page_requests(log: dict) -> list[str]:
    """URLs the page itself asked for (the browser's own update/time checks are not the page's)."""
    alive = log["constants"]["logEventTypes"]["REQUEST_ALIVE"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == alive
            and e.get("params", {}).get("traffic_annotation") == BLINK_LOADER and "url" in e["params"]]


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action", "data", "poster") and v]


def external_refs(text: str) -> list[str]:
    p = _Refs()
    p.feed(text)
    bad = [r for r in p.refs if re.match(r"(?i)\s*(https?:|wss?:|ftp:|//)", r)]
    return bad + re.findall(r"(?i)(?:url\(|@import)\s*['\"]?\s*(?:https?:|//)[^)'\"]*", text)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A run with MMLU (two subjects), one dataset at two few-shot settings, a generation set,
    and three scripted models, two of one family; its HTML report."""
    d = tmp_path_factory.mktemp("html")
    env = clean_env(HF_HOME=str(d / "hf"), EVALCORE_STATE_DIR=str(d / "state"))
    r = run_cli("cachekit", "prefetch", "--local", f"dataset:cais/mmlu={ROOT / 'tests/data/mmlu'}",
                "--out", d / "mmlu.tar", env=env)
    assert r.returncode == 0, r.stderr
    assert run_cli("cachekit", "import", d / "mmlu.tar", env=env).returncode == 0
    arc = (f'\n[[datasets]]\nabbr = "arc{{n}}shot"\npath = "{ARC_JSONL}"\nmode = "ll"\n'
           'template = "Question: {{{{question}}}}\\nAnswer:"\nchoices = "choices.text"\n'
           'gold = "{{{{ choices.label.index(answerKey) }}}}"\n'
           'fewshot = {n}\nfewshot_split = "validation"\n')
    gen = d / "sums.jsonl"
    gen.write_text("".join(json.dumps({"q": f"{i} plus {i}?", "a": f"answer {2 * i}"}) + "\n" for i in range(8)))
    datasets = ('\n[[datasets]]\nname = "mmlu_ppl"\n' + arc.format(n=0) + arc.format(n=2) +
                f'\n[[datasets]]\nabbr = "sums"\npath = "{gen}"\nmode = "gen"\ntemplate = "Q: {{{{q}}}}\\nA:"\nlabel = "a"\n')
    models = (scripted("smol-135M").replace('path = "smol-135M"', 'path = "org/Smol-135M-Instruct"')
              + scripted("smol-360M").replace('path = "smol-360M"', 'path = "org/Smol-360M-Instruct"')
              + scripted("other"))
    plan = write_plan(d / "plan.toml", models, datasets, limit=12)
    r = run_cli("evalcore", "eval", plan, env=env)
    assert r.returncode == 0, r.stderr
    run_dir = run_dir_of(r.stdout)
    out = d / "report.html"
    r = run_cli("evalcore", "report", run_dir, "--format", "html", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert f"wrote html report to {out}" in r.stderr and "results version 1 of 1 (eval" in r.stderr
    return {"dir": d, "html": out, "run_dir": run_dir, "env": env}


def test_the_page_is_self_contained(report):
    text = report["html"].read_text()
    assert external_refs(text) == []
    assert "<svg" in text and "sample-data" in text
    # the check itself catches what it must
    assert external_refs('<img src="https://example.com/a.png"><link href="//cdn.x/y.css">'
                         '<style>@import "http://x/y.css"; .a{background:url(https://x/b.png)}</style>') != []


def test_chromium_draws_table_charts_and_samples_offline(report):
    work = report["dir"] / "browser"
    work.mkdir(exist_ok=True)
    dom, requests = browse(report["html"], work, "--dump-dom")
    assert requests == []
    table = dom[dom.index('id="summary-table"'):]
    table = table[:table.index("</table>")]
    for name in ("mmlu_ppl", "arc0shot", "arc2shot", "sums", "smol-135M", "smol-360M", "other"):
        assert name in table
    assert "±" in table and "n=12" in table and 'class="num best"' in table
    assert dom.count('class="chart chart-bars"') == 4
    assert dom.count('class="chart chart-heatmap"') == 2 and "category:stem" in dom and "abstract_algebra" in dom and "anatomy" in dom
    assert dom.count('class="chart chart-lines"') == 2            # few-shot settings, one family
    # the sample browser ran: cards built by its script, the counter filled in
    assert re.search(r'id="f-count"[^>]*>132 of 132 samples \(25 shown\)<', dom)
    assert dom.count('class="sample ') == 25 and "predicted" in dom and "gold" in dom
    assert "Provenance" in dom and "sha256" in dom and "fingerprint" in dom

    shot = work / "report.png"
    _, requests = browse(report["html"], work, f"--screenshot={shot}", "--window-size=1280,2400")
    assert requests == [] and shot.stat().st_size > 20_000
    print(f"\nscreenshot of the HTML report: {shot}")


def test_the_net_log_check_catches_a_page_request(report):
    work = report["dir"] / "control"
    work.mkdir(exist_ok=True)
    page = work / "control.html"
    page.write_text('<img src="http://example.invalid/x.png"><script>fetch("https://203.0.113.5/a")'
                    '.catch(function () {});</script>')
    _, requests = browse(page, work, "--dump-dom")
    assert "http://example.invalid/x.png" in requests and "https://203.0.113.5/a" in requests


def test_report_html_needs_out_and_per_subject_rows_are_kept(report):
    r = run_cli("evalcore", "report", report["run_dir"], "--format", "html", env=report["env"])
    assert r.returncode == 2 and "--format html needs --out FILE" in r.stderr
    rows = json.loads(run_cli("evalcore", "report", report["run_dir"], "--format", "json",
                              env=report["env"]).stdout)["results"]
    subjects = {(r["subtask"], r["n"]) for r in rows if r["dataset"] == "mmlu_ppl" and r["metric"] == "acc"
                and r["model"] == "other"}
    assert subjects == {("", 12), ("abstract_algebra", 6), ("anatomy", 6), ("category:stem", 12)}  # both are STEM


def test_html_of_a_rescored_run_and_of_failures(report, tmp_path):
    env = report["env"]
    r = run_cli("evalcore", "rescore", report["run_dir"], "--dataset", "sums", "--metric", "exact_match",
                "--filter", r"regex:answer (\d+)", env=env)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rescored.html"
    r = run_cli("evalcore", "report", report["run_dir"], "--format", "html", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "results version 2 of 2 (rescore" in page and "filter: regex:answer (\\d+)" in page
    data = json.loads(page.split('id="sample-data">', 1)[1].split("</script>", 1)[0])
    sums = [s for s in data["samples"] if s["d"] == "sums"]
    assert len(data["prompts"]) == 12 + 12 + 12 + 8                        # one copy per dataset question
    assert sums and all(re.fullmatch(r"\d+", s["pred"]) for s in sums)     # the new filter's answers

    plan = write_plan(tmp_path / "plan.toml", scripted("alpha"), limit=8, max_partition_size=4)
    r = run_cli("evalcore", "eval", plan, env=dict(env, EVALCORE_FAULTS="raise@alpha/arc/0000004"))
    assert r.returncode == 1, r.stderr
    out = tmp_path / "failed.html"
    r = run_cli("evalcore", "report", run_dir_of(r.stdout), "--format", "html", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "alpha/arc/0000004-0000005" in page and "injected fault" in page and "No results yet" in page


def test_chart_and_table_choices_are_pure_rules():
    from evalcore.report.data import summary_grid, version_note
    from evalcore.report.html import families, model_family

    assert model_family("HuggingFaceTB/SmolLM2-135M-Instruct") == ("smollm2--instruct", 135e6)
    assert model_family("Qwen/Qwen2.5-1.5B") == ("qwen2.5-", 1.5e9)
    assert model_family("gpt2") is None
    assert families({"a": "x/Smol-360M", "b": "x/Smol-135M", "c": "y/Other-1B"}) == [["b", "a"]]
    row = {"dataset": "d", "metric": "acc", "mode": "ppl", "task_version": "v", "subtask": "", "stderr": 0.1, "n": 4}
    grid = summary_grid([{**row, "model": "a", "value": 0.5}, {**row, "model": "b", "value": 0.75},
                         {**row, "model": "c", "value": 0.75}], ["a", "b", "c"])
    assert grid[0]["best"] == ["b", "c"]                                     # ties both marked
    grid = summary_grid([{**row, "model": "a", "value": 0.5}, {**row, "model": "b", "value": 0.5}], ["a", "b"])
    assert grid[0]["best"] == []                                             # all equal: none
    note = version_note({"version": 2, "kind": "rescore", "created_at": 0.0,
                         "settings": {"requested": {"metrics": ["gsm8k"], "filter": None, "datasets": []}}}, 2)
    assert note == "results version 2 of 2 (rescore, 1970-01-01 00:00 UTC; metrics: gsm8k)"


def test_html_refusals_leave_nothing_behind(report, tmp_path):
    env = report["env"]
    before = tree_state(tmp_path)
    r = run_cli("evalcore", "report", report["run_dir"], "--format", "html", "--out", tmp_path / "no" / "r.html",
                env=env)
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(err) == 1 and "the folder" in err[0] and "does not exist" in err[0]
    out = tmp_path / "r.html"
    stmt = ("import sys; sys.modules['matplotlib'] = None; from click.testing import CliRunner; "
            "import cli.evalcore_cli as c; "
            f"res = CliRunner().invoke(c.evalcore, ['report', {str(report['run_dir'])!r}, '--format', 'html', "
            f"'--out', {str(out)!r}]); print(res.exit_code); print(res.output)")
    p = subprocess.run([sys.executable, "-c", stmt], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    code, _, output = p.stdout.partition("\n")
    assert code == "2", p.stdout + p.stderr
    assert "the HTML report needs matplotlib, which is not installed" in output and "cachekit-evalcore[report]" in output
    assert tree_state(tmp_path) == before


def test_library_versions_are_found_wherever_the_run_recorded_them():
    from evalcore.report.provenance import library_versions

    recorded = [{"settings": {"backend.versions": {"torch": "2.13.0"}}},
                {"other": [{"identity": {"versions": {"transformers": "5.24.0"}}}]}, {"task_version": "abc"}]
    assert library_versions(recorded) == {"torch": "2.13.0", "transformers": "5.24.0"}
    assert library_versions([{"task_version": "abc"}]) == {}
