"""Hostile bundles: `cachekit verify` and `cachekit import` refuse each one with the same one-line
message and exit 3, and the HF home (absent, or holding another model) is byte for byte as it
was afterwards, folders and lock files included.

Each case is a bundle a real prefetch wrote, then altered the way an attacker (or a broken copy)
would: links out of a folder bundle, a tar stuffed with members, a manifest whose files collide.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from cachekit import manifest as mf
from cachekit.bundle import MEMBER_BOUND, NAMED_PROBLEMS, pack_tar
from scripts.hubserver import git_blob_sha1
from tests.conftest import clean_env, run_cli, tree_state
from tests.test_verify import make_model_folder, objects_of


@pytest.fixture(params=["absent", "populated"])
def env(request, tmp_path):
    """An HF home that does not exist yet, or one that already holds another model."""
    env = clean_env(HF_HOME=str(tmp_path / "hf"))
    if request.param == "populated":
        src = make_model_folder(tmp_path / "src-other")
        other = tmp_path / "other-bundle"
        assert run_cli("cachekit", "prefetch", "--local", f"testorg/other={src}", "--out", other, env=env).returncode == 0
        assert run_cli("cachekit", "import", other, env=env).returncode == 0
        assert (tmp_path / "hf" / "hub" / ".cachekit.lock").exists()
    return env


@pytest.fixture
def bundle(tmp_path, env) -> Path:
    src = make_model_folder(tmp_path / "src")
    (src / "generation_config.json").write_text(json.dumps({"max_new_tokens": 8}))
    out = tmp_path / "bundle"
    r = run_cli("cachekit", "prefetch", "--local", f"testorg/small={src}", "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    return out


def assert_refused(bundle: Path, env: dict, needle: str, *, link: bool = True) -> str:
    """verify and import (and import --link for folders) refuse with exit 3 and one message;
    the HF home does not change. Returns the message."""
    hf = Path(env["HF_HOME"])
    before = tree_state(hf)
    verify = run_cli("cachekit", "verify", bundle, env=env)
    runs = [run_cli("cachekit", "import", bundle, env=env)]
    if link and bundle.is_dir():
        runs.append(run_cli("cachekit", "import", bundle, "--link", env=env))
    for r in [verify, *runs]:
        assert r.returncode == 3, (r.args, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert lines[0].startswith("error: ") and needle in lines[0], r.stderr
        assert len(lines) == 2 and lines[1].startswith("hint: "), r.stderr  # one message, one hint
        assert r.stderr == verify.stderr, "import and verify disagree"
        assert tree_state(hf) == before, f"{r.args[3:]} changed the HF home"
    return lines[0]


def edit_manifest(bundle: Path, change) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    change(doc["entries"][0])
    (bundle / "manifest.json").write_text(json.dumps(doc))


def as_tar(bundle: Path) -> Path:
    out = bundle.with_name(bundle.name + ".tar")
    pack_tar(bundle, out)
    return out


# -- folder bundles: nothing is read through a link ----------------------------------------------

def test_objects_folder_linked_outside(bundle, env, tmp_path):
    """objects/xx a link to a folder outside (same bytes there: the hashes would all match)."""
    weights = objects_of(bundle)["weights.bin"]
    prefix = weights.parent
    outside = tmp_path / "outside" / prefix.name
    shutil.move(prefix, outside)
    os.symlink(outside, prefix)
    msg = assert_refused(bundle, env, f"unsafe: objects/{prefix.name} (link leaving the bundle -> {outside})")
    assert msg.startswith("error: bundle verification failed: ")


def test_object_file_linked_outside(bundle, env, tmp_path):
    weights = objects_of(bundle)["weights.bin"]
    outside = tmp_path / "outside-weights"
    shutil.move(weights, outside)
    os.symlink(outside, weights)
    assert_refused(bundle, env, f"unsafe: {weights.relative_to(bundle)} (link leaving the bundle -> {outside})")


def test_extra_link_to_etc_passwd(bundle, env):
    os.symlink("/etc/passwd", bundle / "objects" / "passwd")
    assert_refused(bundle, env, "unsafe: objects/passwd (link leaving the bundle -> /etc/passwd)")


def test_link_inside_the_bundle(bundle, env):
    weights = objects_of(bundle)["weights.bin"]
    os.symlink(weights.name, weights.parent / "alias")
    assert_refused(bundle, env, f"unsafe: {(weights.parent / 'alias').relative_to(bundle)} (a link")


def test_manifest_is_a_link(bundle, env, tmp_path):
    shutil.move(bundle / "manifest.json", tmp_path / "manifest.json")
    os.symlink(tmp_path / "manifest.json", bundle / "manifest.json")
    assert_refused(bundle, env, "manifest.json is a link")


def test_fifo_object_is_refused_without_blocking(bundle, env):
    notes = objects_of(bundle)["sub/notes.txt"]
    notes.unlink()
    os.mkfifo(notes)
    assert_refused(bundle, env, f"unsafe: {notes.relative_to(bundle)} (not a regular file")


# -- tar bundles: members checked as they stream, bounded -----------------------------------------

def test_tar_with_many_unlisted_members(bundle, env, tmp_path):
    """20,000 extra members (the issue's 200,000 behave the same: reading stops at the bound)."""
    bad = tmp_path / "stuffed.tar"
    with tarfile.open(as_tar(bundle)) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        for i in range(20_000):
            dst.addfile(tarfile.TarInfo(f"objects/ff/junk-{i:05d}"), io.BytesIO(b""))
    hf = Path(env["HF_HOME"])
    before = tree_state(hf)
    verify = run_cli("cachekit", "verify", bad, env=env)
    imp = run_cli("cachekit", "import", bad, env=env)
    for r in (verify, imp):
        assert r.returncode == 3
        lines = r.stderr.splitlines()
        assert lines[0] == f"error: {NAMED_PROBLEMS + 1} problems:"
        assert lines[1] == "  unlisted: objects/ff/junk-00000"
        assert lines[NAMED_PROBLEMS + 1] == (f"  unlisted: {MEMBER_BOUND - NAMED_PROBLEMS} more members (reading "
                                             f"stopped after {MEMBER_BOUND} members cachekit never writes)")
        assert len(lines) == NAMED_PROBLEMS + 3 and lines[-1].startswith("hint: ")
    assert imp.stderr == verify.stderr
    assert tree_state(hf) == before


def test_tar_whose_first_member_is_not_the_manifest(bundle, env, tmp_path):
    bad = tmp_path / "reordered.tar"
    with tarfile.open(as_tar(bundle)) as src, tarfile.open(bad, "w") as dst:
        members = src.getmembers()
        for m in members[1:] + members[:1]:
            dst.addfile(m, src.extractfile(m))
    assert_refused(bad, env, "not manifest.json")


def test_tar_object_listed_twice_with_other_bytes(bundle, env, tmp_path):
    bad = tmp_path / "twice.tar"
    weights = objects_of(bundle)["weights.bin"].relative_to(bundle).as_posix()
    with tarfile.open(as_tar(bundle)) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        info = src.getmember(weights)
        dst.addfile(info, io.BytesIO(b"\0" * info.size))
    assert_refused(bad, env, f"unsafe: {weights} (duplicate archive member)")


# -- manifests whose files collide, or name no hub form -------------------------------------------

def test_two_files_one_etag_different_bytes(bundle, env):
    """generation_config.json claiming config.json's blob would be installed with its bytes."""
    cfg = (bundle.parent / "src" / "config.json").read_bytes()
    etag = git_blob_sha1(cfg)

    def change(entry):
        for f in entry["files"]:
            if f["path"] in ("config.json", "generation_config.json"):
                f["etag"] = etag
    edit_manifest(bundle, change)
    for b in (bundle, as_tar(bundle)):
        assert_refused(b, env, "files 'config.json' and 'generation_config.json' have the same etag")


def test_file_that_is_also_a_folder(bundle, env):
    def change(entry):
        notes = next(f for f in entry["files"] if f["path"] == "sub/notes.txt")
        entry["files"].append({**notes, "path": "sub"})
    edit_manifest(bundle, change)
    for b in (bundle, as_tar(bundle)):
        assert_refused(b, env, "'sub' is both a file and the folder of 'sub/notes.txt'")


def test_same_path_twice(bundle, env):
    edit_manifest(bundle, lambda e: e["files"].append(dict(e["files"][0])))
    assert_refused(bundle, env, f"duplicate file {json.loads((bundle / 'manifest.json').read_text())['entries'][0]['files'][0]['path']!r}")


@pytest.mark.parametrize("revision, needle", [
    ("", "invalid revision '' (empty)"),
    ("main/../../x", "invalid revision 'main/../../x'"),
    ("refs/", "invalid revision 'refs/' (not a git ref name)"),
])
def test_revision_not_in_hub_form(bundle, env, revision, needle):
    edit_manifest(bundle, lambda e: e.update(revision=revision))
    for b in (bundle, as_tar(bundle)):
        assert_refused(b, env, needle)


@pytest.mark.parametrize("etag, needle", [
    ("", "invalid etag ''"),
    ("f" * 64, "sha256 etag ffffffffffff… that is not its sha256"),
])
def test_etag_not_in_hub_form(bundle, env, etag, needle):
    edit_manifest(bundle, lambda e: e["files"][0].update(etag=etag))
    assert_refused(bundle, env, needle)


def test_a_good_bundle_still_imports(bundle, env):
    """The checks refuse the hostile, not the ordinary: the same bundle, untouched, imports."""
    r = run_cli("cachekit", "import", bundle, "--link", env=env)
    assert r.returncode == 0, r.stderr
    e = mf.parse((bundle / "manifest.json").read_text()).entries[0]
    snap = Path(env["HF_HOME"]) / "hub" / "models--testorg--small" / "snapshots" / e.commit
    assert (snap / "generation_config.json").read_bytes() == (bundle.parent / "src" / "generation_config.json").read_bytes()
