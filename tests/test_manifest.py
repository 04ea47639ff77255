"""The manifest parser refuses every malformed or hostile manifest with a message naming the item."""

import json

import pytest

from cachekit import manifest as mf
from cachekit.errors import BundleError

SHA = "a" * 64
COMMIT = "b" * 40


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
    ({"files": [{"path": "../x", "size": 1, "sha256": SHA}]}, "leaves the bundle"),
    ({"files": [{"path": "/etc/passwd", "size": 1, "sha256": SHA}]}, "absolute"),
    ({"files": [{"path": "a\\b", "size": 1, "sha256": SHA}]}, "absolute or not a POSIX path"),
    ({"files": [{"path": "a//b", "size": 1, "sha256": SHA}]}, "not normalised"),
    ({"files": [{"path": "x", "size": -1, "sha256": SHA}]}, "invalid size"),
    ({"files": [{"path": "x", "size": 1, "sha256": "zz"}]}, "invalid sha256"),
    ({"files": [{"path": "x", "size": 1, "sha256": SHA}, {"path": "x", "size": 1, "sha256": SHA}]}, "duplicate file"),
    ({"splits": {"c": {"train": {"path": "nope.parquet"}}}}, "names no file"),
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
    d = doc(files=[{"path": "a", "size": 1, "sha256": SHA}, {"path": "b", "size": 2, "sha256": SHA}])
    with pytest.raises(BundleError, match="two different sizes"):
        mf.parse(json.dumps(d))


def test_merge_replaces_same_commit_only():
    old = mf.parse(json.dumps(doc()))
    other = mf.Entry("model", "org/other", "model", "main", COMMIT, ())
    same = mf.Entry("model", "org/name", "model", "main", COMMIT, ())
    assert mf.merge(old, [other]) == [old.entries[0], other]
    assert mf.merge(old, [same]) == [same]
