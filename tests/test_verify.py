"""`cachekit verify`: exit 0 for a good bundle; exit 3 listing every problem otherwise, and the
bundle is never changed by verifying it."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from cachekit import manifest as mf
from tests.conftest import clean_env, run_cli, tree_state


def make_model_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "weights.bin").write_bytes(os.urandom(300_000))
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text("hello")
    (root / "copy-of-config.json").write_text(json.dumps({"model_type": "llama"}))  # stored once
    return root


@pytest.fixture
def env(tmp_path):
    return clean_env(HF_HOME=str(tmp_path / "hf"))


@pytest.fixture
def dir_bundle(tmp_path, env) -> Path:
    src = make_model_folder(tmp_path / "src")
    out = tmp_path / "bundle"
    r = run_cli("cachekit", "prefetch", "--local", f"testorg/small={src}", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def tar_bundle(tmp_path, env, dir_bundle) -> Path:
    out = tmp_path / "bundle.tar"
    src = dir_bundle.parent / "src"
    r = run_cli("cachekit", "prefetch", "--local", f"testorg/small={src}", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    return out


def objects_of(bundle: Path) -> dict[str, Path]:
    m = mf.parse((bundle / "manifest.json").read_text())
    return {f.path: bundle / mf.object_path(f.sha256) for e in m.entries for f in e.files}


def verify(bundle, env):
    before = tree_state(bundle) if Path(bundle).is_dir() else Path(bundle).read_bytes()
    r = run_cli("cachekit", "verify", bundle, env=env)
    after = tree_state(bundle) if Path(bundle).is_dir() else Path(bundle).read_bytes()
    assert before == after, "verify changed the bundle"
    return r


def test_good_bundles_verify(dir_bundle, tar_bundle, env):
    m = mf.parse((dir_bundle / "manifest.json").read_text())
    assert len(m.entries[0].files) == 4 and len(m.objects()) == 3  # two identical files stored once
    for b in (dir_bundle, tar_bundle):
        r = verify(b, env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ok:")


def test_every_problem_is_listed(dir_bundle, env):
    objs = objects_of(dir_bundle)
    data = bytearray(objs["weights.bin"].read_bytes())
    data[1000] ^= 0xFF
    objs["weights.bin"].write_bytes(bytes(data))                 # corrupt
    objs["sub/notes.txt"].write_text("hel")                       # truncated
    objs["config.json"].unlink()                                  # missing (both config files)
    (dir_bundle / "objects" / "stray.bin").write_text("x")        # unlisted
    r = verify(dir_bundle, env)
    assert r.returncode == 3
    err = r.stderr
    assert "error: 4 problems:" in err
    assert "corrupt: objects/" in err and "[testorg/small/weights.bin]" in err
    assert "truncated: objects/" in err and "(3 of 5 bytes)" in err
    assert "missing: objects/" in err and "config.json]" in err
    assert "unlisted: objects/stray.bin" in err
    assert "hint:" in err


@pytest.mark.parametrize("content, needle", [
    (None, "has no manifest.json"),
    (b"{oops", "manifest.json is not valid JSON"),
    (json.dumps({"schema_version": 7, "entries": []}).encode(), "unknown schema version 7"),
])
def test_manifest_problems(dir_bundle, env, content, needle):
    if content is None:
        (dir_bundle / "manifest.json").unlink()
    else:
        (dir_bundle / "manifest.json").write_bytes(content)
    r = verify(dir_bundle, env)
    assert r.returncode == 3
    assert r.stderr.startswith("error: ") and needle in r.stderr.splitlines()[0]


def test_link_leaving_folder_bundle(dir_bundle, env, tmp_path):
    (tmp_path / "outside").write_text("secret")
    os.symlink(tmp_path / "outside", dir_bundle / "objects" / "evil")
    r = verify(dir_bundle, env)
    assert r.returncode == 3
    assert "unsafe: objects/evil (link leaving the bundle" in r.stderr


def _hostile_tar(good: Path, out: Path, add) -> Path:
    with tarfile.open(good) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        add(dst)
    return out


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


HOSTILE = {
    "dotdot": (lambda: _file("objects/../../escape.txt"), "unsafe: objects/../../escape.txt"),
    "absolute": (lambda: _file("/tmp/cachekit-absolute.txt"), "unsafe: /tmp/cachekit-absolute.txt"),
    "symlink": (lambda: _link("objects/aa/link", "/etc/passwd"), "unsafe: objects/aa/link (link to '/etc/passwd'"),
    "hardlink": (lambda: _link("objects/aa/hard", "../../../etc/passwd", tarfile.LNKTYPE), "unsafe: objects/aa/hard"),
    "device": (lambda: _device("objects/aa/dev"), "unsafe: objects/aa/dev (not a regular file"),
    "duplicate": (lambda: _file("manifest.json", b"{}"), "unsafe: manifest.json (duplicate archive member)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_members(tar_bundle, env, tmp_path, case):
    make, needle = HOSTILE[case]
    bad = _hostile_tar(tar_bundle, tmp_path / f"{case}.tar", lambda t: t.addfile(*make()))
    r = verify(bad, env)
    assert r.returncode == 3, r.stderr
    assert needle in r.stderr
    hf = Path(env["HF_HOME"])
    r = run_cli("cachekit", "import", bad, env=env)
    assert r.returncode == 3 and needle in r.stderr
    assert tree_state(hf) == {}, "a refused import created something in the HF home"
    assert not Path("/tmp/cachekit-absolute.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_not_a_bundle(tmp_path, env):
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    r = run_cli("cachekit", "verify", tmp_path / "junk.tar", env=env)
    assert r.returncode == 3 and "is not a readable tar archive" in r.stderr
    r = run_cli("cachekit", "verify", tmp_path / "nowhere", env=env)
    assert r.returncode == 4 and "no bundle at" in r.stderr


def test_truncated_tar(tar_bundle, env, tmp_path):
    cut = tmp_path / "cut.tar"
    data = tar_bundle.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    r = verify(cut, env)
    assert r.returncode == 3
    assert r.stderr.startswith("error:")


def test_folder_and_tar_hold_same_objects(dir_bundle, tar_bundle):
    with tarfile.open(tar_bundle) as t:
        names = t.getnames()
    assert names[0] == "manifest.json"
    assert sorted(n for n in names if n.startswith("objects/")) == sorted(
        p.relative_to(dir_bundle).as_posix() for p in (dir_bundle / "objects").rglob("*") if p.is_file())
    shutil.rmtree(dir_bundle)
