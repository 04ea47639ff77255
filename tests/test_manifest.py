"""The manifest parser refuses every malformed or hostile manifest with a message naming the item."""

import json

import pytest

from cachekit import manifest as mf
from cachekit.errors import BundleError

SHA = "a" * 64
SHA2 = "c" * 64
ETAG = "e" * 40
COMMIT = "b" * 40


def F(path, sha=SHA, etag=None):  # noqa: N802 (a file record)
    return {"path": path, "size": 1, "sha256": sha, "etag": sha if etag is None else etag}


def doc(**entry_overrides):
    entry = {"kind": "model", "repo_id": "org/name", "repo_type": "model", "revision": "main",
             "commit": COMMIT, "files": [{"path": "config.json", "size": 3, "sha256": SHA, "etag": SHA}]}
    entry.update(entry_overrides)
    return {"schema_version": 1, "tool": {"name": "cachekit", "version": "0"}, "created": "x",
            "libraries": {}, "entries": [entry]}


def test_round_trip():
    m = mf.parse(json.dumps(doc()))
    assert mf.parse(m.to_json()) == m
    assert m.objects() == {SHA: 3}


@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ("[]", "not a JSON object"),
    (json.dumps({**doc(), "schema_version": 99}), "unknown schema version 99"),
    (json.dumps({**doc(), "entries": None}), "no 'entries' list"),
])
def test_document_level_errors(text, needle):
    with pytest.raises(BundleError, match=needle):
        mf.parse(text)


@pytest.mark.parametrize("overrides, needle", [
    ({"kind": "weights"}, "unknown kind"),
    ({"repo_type": "bucket"}, "unknown repo_type"),
    ({"repo_id": "../evil"}, "invalid repo id"),
    ({"commit": "main"}, "not 40 hex"),
    ({"files": [F("../x")]}, "leaves the bundle"),
    ({"files": [F("/etc/passwd")]}, "absolute"),
    ({"files": [F("a\\b")]}, "absolute or not a POSIX path"),
    ({"files": [F("a//b")]}, "not normalised"),
    ({"files": [{**F("x"), "size": -1}]}, "invalid size"),
    ({"files": [{**F("x"), "sha256": "zz"}]}, "invalid sha256"),
    ({"files": [F("x"), F("x")]}, "duplicate file"),
    ({"splits": {"c": {"train": {"path": "nope.parquet"}}}}, "names no file"),
    # collisions: a file that is also a folder; one etag for two contents
    ({"files": [F("config.json"), F("config.json/inner")]}, "'config.json' is both a file and the folder of"),
    ({"files": [F("config.json", SHA, ETAG), F("generation_config.json", SHA2, ETAG)]},
     "have the same etag .* but different bytes"),
    # etags and revisions in the hub's forms
    ({"files": [{"path": "x", "size": 1, "sha256": SHA}]}, "invalid etag None"),
    ({"files": [F("x", etag="")]}, "invalid etag ''"),
    ({"files": [F("x", etag="b" * 64)]}, "sha256 etag .* that is not its sha256"),
    ({"revision": ""}, r"invalid revision '' \(empty\)"),
    ({"revision": "a b"}, "invalid revision 'a b'"),
    ({"revision": "main/"}, "not a git ref name"),
    ({"revision": "x..y"}, "not a git ref name"),
    ({"revision": ".hidden"}, "not a git ref name"),
    ({"revision": "v1.lock"}, "not a git ref name"),
    ({"revision": "c" * 40}, "a commit id other than the entry's commit"),
])
def test_entry_errors(overrides, needle):
    with pytest.raises(BundleError, match=needle):
        mf.parse(json.dumps(doc(**overrides)))


def test_duplicate_entries_refused():
    d = doc()
    d["entries"].append(dict(d["entries"][0]))
    with pytest.raises(BundleError, match="duplicate entry"):
        mf.parse(json.dumps(d))


def test_one_object_two_sizes_refused():
    d = doc(files=[F("a"), {**F("b"), "size": 2}])
    with pytest.raises(BundleError, match="two different sizes"):
        mf.parse(json.dumps(d))


def test_hub_revision_forms_accepted():
    for rev in ("main", "v1.0", "refs/pr/1", "refs/convert/parquet", "release/2024-01", COMMIT):
        assert mf.parse(json.dumps(doc(revision=rev))).entries[0].revision == rev


def test_same_etag_across_commits_of_one_repo_must_agree():
    d = doc(files=[F("config.json", SHA, ETAG)])
    second = {**d["entries"][0], "commit": "d" * 40, "revision": "v2",
              "files": [F("config.json", SHA2, ETAG)]}
    d["entries"].append(second)
    with pytest.raises(BundleError, match="same etag"):
        mf.parse(json.dumps(d))
    second["repo_id"] = "org/other"  # another repo has its own blobs folder: no clash
    assert len(mf.parse(json.dumps(d)).entries) == 2


def test_one_revision_two_commits_or_ref_folder_refused():
    d = doc()
    d["entries"].append({**d["entries"][0], "commit": "d" * 40})
    with pytest.raises(BundleError, match="revision 'main' names two commits"):
        mf.parse(json.dumps(d))
    d["entries"][1]["revision"] = "main/x"
    with pytest.raises(BundleError, match="'main' is both a file and the folder of 'main/x'"):
        mf.parse(json.dumps(d))


def test_merge_pins_an_old_entry_whose_revision_moved():
    old = mf.parse(json.dumps(doc()))
    moved = mf.Entry("model", "org/name", "model", "main", "d" * 40, ())
    kept, new = mf.merge(old, [moved])
    assert kept.revision == COMMIT and kept.commit == COMMIT and new is moved


def test_merge_replaces_same_commit_only():
    old = mf.parse(json.dumps(doc()))
    other = mf.Entry("model", "org/other", "model", "main", COMMIT, ())
    same = mf.Entry("model", "org/name", "model", "main", COMMIT, ())
    assert mf.merge(old, [other]) == [old.entries[0], other]
    assert mf.merge(old, [same]) == [same]


def test_refs_are_checked_and_a_moved_ref_leaves_the_older_entry():
    with pytest.raises(BundleError, match="invalid ref 'a..b'"):
        mf.parse(json.dumps(doc(refs=["a..b"])))
    old = mf.parse(json.dumps(doc(revision="v1", refs=["main", "stable"])))
    assert old.entries[0].ref_names == ("v1", "main", "stable")
    newer = mf.Entry("model", "org/name", "model", "main", "d" * 40, ())
    kept, _ = mf.merge(old, [newer])
    assert kept.revision == "v1" and kept.refs == ("stable",)
    d = doc(refs=["main"])
    d["entries"].append({**d["entries"][0], "commit": "d" * 40, "revision": "dev", "refs": ["main"]})
    with pytest.raises(BundleError, match="revision 'main' names two commits"):
        mf.parse(json.dumps(d))
