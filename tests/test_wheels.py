"""The toolkit travels too (issue 13 item 6): `cachekit prefetch --wheels` puts the toolkit's own
wheel and every dependency wheel for a target platform/Python into the bundle's wheels/, listed
in the manifest with sha256; `cachekit verify` checks them, `cachekit import` prints the offline
install, `cachekit wheels` copies them out of a .tar.

The full test downloads the real dependency set (torch pinned as the Makefile does; pip serves it
from its cache and the host's wheel folder after the first run) and installs it into a fresh venv
with the index disabled and no pip configuration, as on an offline host: several minutes on a
loaded machine, so it is marked slow. The refusals use a small bundle written by cachekit's own
writer, and pip's real failure for a wheel that does not exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachekit import manifest as mf
from cachekit.bundle import pack_tar
from cachekit.wheels import platform_tags
from cachekit.writer import BundleWriter
from tests.conftest import ROOT, clean_env, run_cli, tree_state

WHEELHOUSE = ROOT / "build" / "wheelhouse-bundle" / "wheels"  # `make wheelhouse` (a prerequisite of make test)


def offline_pip_env(**extra: str) -> dict[str, str]:
    """cachekit's env with pip resolving from the local wheel folder only: no index, no pip
    configuration of this host (its find-links and extra indexes), no network."""
    if not WHEELHOUSE.is_dir():
        pytest.skip("no local wheel folder: `make test` seeds it first (make wheelhouse)")
    env = {k: v for k, v in clean_env(**extra).items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


TARGET = ["--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
          "--platform", "manylinux_2_28_x86_64"]


def small_bundle(folder: Path) -> Path:
    """A bundle with two small wheel files (their bytes do not matter to verify and copy)."""
    src = folder.parent / "src"
    src.mkdir()
    writer = BundleWriter(folder)
    recs = []
    for name, data in (("a_pkg-1.0-py3-none-any.whl", b"A" * 1000), ("b_pkg-2.0-py3-none-any.whl", b"B" * 10)):
        (src / name).write_bytes(data)
        recs.append(writer.add_wheel(src / name))
    writer.finish([], {}, tuple(recs), {"python_version": "3.11", "platforms": ["manylinux_2_28_x86_64"]})
    return folder


def test_manifest_lists_wheels_and_verify_checks_them(tmp_path):
    b = small_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    assert [w["path"] for w in m["wheels"]["files"]] == ["wheels/a_pkg-1.0-py3-none-any.whl",
                                                         "wheels/b_pkg-2.0-py3-none-any.whl"]
    assert sorted(p.name for p in (b / "wheels").iterdir()) == ["a_pkg-1.0-py3-none-any.whl",
                                                                "b_pkg-2.0-py3-none-any.whl"]
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    r = run_cli("cachekit", "verify", b, env=env)
    assert r.returncode == 0 and "2 wheels verified" in r.stdout, r.stderr
    (b / "wheels" / "a_pkg-1.0-py3-none-any.whl").write_bytes(b"X" * 1000)
    (b / "wheels" / "stray-0-py3-none-any.whl").write_bytes(b"s")
    r = run_cli("cachekit", "verify", b, env=env)
    assert r.returncode == 3
    assert "unlisted: wheels/stray-0-py3-none-any.whl" in r.stderr
    assert "corrupt: wheels/a_pkg-1.0-py3-none-any.whl [wheel] (sha256 " in r.stderr


def test_bad_wheel_entries_are_refused_by_the_manifest_reader():
    base = {"schema_version": 1, "entries": []}
    for files, why in ((["x"], "not an object"), ([{"path": "wheels/../x.whl", "size": 1, "sha256": "0" * 64}], "wheel"),
                       ([{"path": "objects/x.whl", "size": 1, "sha256": "0" * 64}], "wheel"),
                       ([{"path": "wheels/a-1-py3-none-any.whl", "size": -1, "sha256": "0" * 64}], "invalid size")):
        with pytest.raises(mf.BundleError, match=why):
            mf.parse(json.dumps({**base, "wheels": {"target": {}, "files": files}}))


def test_wheels_copied_out_of_a_tar_and_import_shows_the_install(tmp_path):
    folder = small_bundle(tmp_path / "b")
    tar = tmp_path / "b.tar"
    pack_tar(folder, tar)
    env = clean_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    r = run_cli("cachekit", "import", tar, env=env)
    assert r.returncode == 0, r.stderr
    assert f"cachekit wheels {tar} --out {tmp_path / 'b'}/wheels" in r.stdout
    assert f"pip install --no-index --find-links {tmp_path / 'b'}/wheels cachekit-evalcore" in r.stdout
    r = run_cli("cachekit", "import", folder, env=env)
    assert f"pip install --no-index --find-links {folder}/wheels cachekit-evalcore" in r.stdout
    out = tmp_path / "w"
    r = run_cli("cachekit", "wheels", tar, "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (folder / "wheels").iterdir())
    assert (out / "a_pkg-1.0-py3-none-any.whl").read_bytes() == b"A" * 1000


def test_wheels_refusals_leave_nothing(tmp_path):
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    folder = small_bundle(tmp_path / "b")
    # a damaged wheel inside a tar: exit 3, one line naming it, no --out folder
    (folder / "wheels" / "b_pkg-2.0-py3-none-any.whl").write_bytes(b"C" * 10)
    tar = tmp_path / "b.tar"
    pack_tar(folder, tar)
    before = tree_state(tmp_path)
    r = run_cli("cachekit", "wheels", tar, "--out", tmp_path / "w", env=env)
    assert r.returncode == 3
    assert r.stderr.splitlines()[0] == "error: bundle verification failed: corrupt: wheels/b_pkg-2.0-py3-none-any.whl " \
        f"(sha256 {__import__('hashlib').sha256(b'C' * 10).hexdigest()[:12]}…, 10 bytes)"
    assert tree_state(tmp_path) == before
    # a bundle without wheels: exit 4
    nowheels = tmp_path / "n"
    BundleWriter(nowheels).finish([], {})
    before = tree_state(tmp_path)
    r = run_cli("cachekit", "wheels", nowheels, "--out", tmp_path / "w", env=env)
    assert r.returncode == 4 and r.stderr.startswith(f"error: {nowheels} holds no wheels\n")
    assert tree_state(tmp_path) == before
    # options that only --wheels uses, without it: exit 2 before anything is written
    r = run_cli("cachekit", "prefetch", "--platform", "manylinux_2_28_x86_64", "--out", tmp_path / "x", env=env)
    assert r.returncode == 2 and "only apply with --wheels" in r.stderr
    for args, msg in ((["--platform", "manylinux_2_28_x86_64"], "needs --python-version"),
                      (["--python-version", "3.11"], "needs --platform"),
                      (["--python-version", "3", "--platform", "x"], "is not MAJOR.MINOR"),
                      (TARGET + ["--torch", "torch>=2"], "is not a pinned torch")):
        r = run_cli("cachekit", "prefetch", "--wheels", *args, "--out", tmp_path / "x", env=env)
        assert r.returncode == 2 and msg in r.stderr.splitlines()[0], r.stderr
    assert not (tmp_path / "x").exists()


def test_pip_missing_is_one_line_exit_4_and_no_bundle(tmp_path):
    # an interpreter where `python -m pip` fails as it does without pip: a `pip` that cannot be imported
    shadow = tmp_path / "nopip" / "pip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'pip'\")\n")
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
    r = run_cli("cachekit", "prefetch", "--wheels", *TARGET, "--out", tmp_path / "b.tar", env=env)
    assert r.returncode == 4, r.stderr
    assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == \
        ["error: pip is not installed in this Python, and --wheels runs pip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "nopip"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["nopip"]


def test_platform_tags_widen_manylinux_as_pip_install_does():
    tags = platform_tags(("manylinux_2_28_x86_64",))
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert platform_tags(("macosx_11_0_arm64",)) == ("macosx_11_0_arm64",)


@pytest.mark.slow
def test_a_wheel_missing_for_the_target_is_exit_4_and_no_bundle(tmp_path):
    env = offline_pip_env(HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "bundle"
    # torch ships no musllinux wheels
    r = run_cli("cachekit", "prefetch", "--wheels", "--python-version", "3.11", "--platform", "musllinux_1_2_x86_64",
                "--out", out, env=env, timeout=900)
    assert r.returncode == 4, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert errors == ["error: no wheel of torch==2.13.0 for Python 3.11 on musllinux_1_2_x86_64 (pip download)"], \
        r.stderr
    assert not out.exists() and not (tmp_path / "bundle.partial").exists()


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_offline_install_from_the_bundle_in_a_fresh_venv(tmp_path):
    """The README's commands: prefetch --wheels (pip resolving the real dependency set for the
    target, from the local wheel folder instead of PyPI), then on the "offline host" the install
    as written, with no index and no pip configuration."""
    env = offline_pip_env(HF_HOME=str(tmp_path / "hf"))
    tar = tmp_path / "bundle.tar"
    # what setuptools writes when it builds in place (an editable install made the egg-info already)
    touched = [ROOT / "cachekit_evalcore.egg-info", ROOT / "build" / "lib", ROOT / "build" / "bdist.linux-x86_64"]
    before = [tree_state(t) for t in touched]
    r = run_cli("cachekit", "prefetch", "--wheels", *TARGET, "--out", tar, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [tree_state(t) for t in touched] == before, "the wheel build wrote into the source tree"
    r = run_cli("cachekit", "verify", tar, env=env, timeout=600)
    assert r.returncode == 0 and "wheels verified" in r.stdout, r.stderr
    wheels = tmp_path / "bundle" / "wheels"
    r = run_cli("cachekit", "wheels", tar, "--out", wheels, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    names = {p.name.split("-")[0].lower() for p in wheels.iterdir()}
    assert {"cachekit_evalcore", "torch", "transformers", "datasets", "huggingface_hub", "click",
            "sqlite_utils", "filelock"} <= names
    assert any(p.name.startswith("torch-2.13.0") for p in wheels.iterdir())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=600)
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "HF_", "VIRTUAL_ENV"))}
    offline.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", OMP_NUM_THREADS="1")
    pip = subprocess.run(f"pip install --no-index --find-links {wheels} cachekit-evalcore", shell=True,
                         env={**offline, "PATH": f"{venv / 'bin'}:{offline['PATH']}"}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=2000)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    for tool in ("cachekit", "evalcore"):
        h = subprocess.run([str(venv / "bin" / tool), "--help"], env=offline, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert h.returncode == 0 and h.stdout.startswith(f"Usage: {tool}"), h.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import cachekit, torch; print(cachekit.__file__, torch.__version__)"],
                           env=offline, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert where.stdout.startswith(str(venv)) and "2.13.0" in where.stdout, where.stdout + where.stderr


@pytest.mark.parametrize("as_tar", [False, True])
def test_extending_a_bundle_keeps_its_wheels(tmp_path, as_tar):
    folder = small_bundle(tmp_path / "b")
    out = folder
    if as_tar:
        out = tmp_path / "b.tar"
        pack_tar(folder, out)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    r = run_cli("cachekit", "prefetch", "--local", f"testorg/m={model}", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    assert "2 wheels" in r.stdout
    r = run_cli("cachekit", "verify", out, env=env)
    assert r.returncode == 0 and "2 wheels verified" in r.stdout, r.stderr
