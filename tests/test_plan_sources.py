"""The planner's metadata merge rules (provisioner/plan_sources.py): missing fields are asked of the next
source, while malformed or contradicting ones are BadRemoteError (exit 9)."""

from __future__ import annotations

import pytest

from provisioner.errors import BadRemoteError
from provisioner.manifest import FileEntry
from provisioner.plan_sources import FileMeta, merge_head, merge_listing, merge_sibling, normalize_etag

SHA256 = "a" * 64
SHA1 = "b" * 40
POINTER_OID = "c" * 40


def test_name_only_sibling_is_incomplete_not_malformed() -> None:
    m = FileMeta(path="x.json")
    merge_sibling(m, {"rfilename": "x.json"})
    assert not m.complete and m.size is None


def test_two_sources_disagreeing_on_size_is_bad_remote() -> None:
    m = FileMeta(path="x.json")
    merge_listing(m, {"path": "x.json", "size": 10, "oid": SHA1}, source="tree", reports_lfs=True)
    with pytest.raises(BadRemoteError, match="two sizes"):
        merge_listing(m, {"path": "x.json", "size": 11, "oid": SHA1}, source="paths-info", reports_lfs=True)


def test_head_that_lies_about_the_size_is_bad_remote() -> None:
    m = FileMeta(path="x.json")
    merge_listing(m, {"path": "x.json", "size": 10, "oid": SHA1}, source="tree", reports_lfs=False)
    with pytest.raises(BadRemoteError, match="two sizes"):
        merge_head(m, size=12, etag=SHA1)


@pytest.mark.parametrize("size", [-1, 1 << 51, "12", True, 1.5])
def test_absurd_size_from_any_source_is_bad_remote(size: object) -> None:
    with pytest.raises(BadRemoteError):
        merge_head(FileMeta(path="x"), size=size, etag=None)  # type: ignore[arg-type]


def test_bare_tree_oid_is_only_a_hint_until_the_etag_confirms_it() -> None:
    lfs = FileMeta(path="w.safetensors")
    merge_listing(lfs, {"path": "w.safetensors", "size": 5, "oid": POINTER_OID}, source="tree", reports_lfs=False)
    assert not lfs.complete  # the pointer's oid is not the content's digest
    merge_head(lfs, size=5, etag=f'"{SHA256}"')
    assert lfs.sha256 == SHA256 and lfs.blob_sha1 is None
    small = FileMeta(path="c.json")
    merge_listing(small, {"path": "c.json", "size": 3, "oid": SHA1}, source="tree", reports_lfs=False)
    merge_head(small, size=3, etag=f'W/"{SHA1}"')
    assert small.blob_sha1 == SHA1


def test_no_digest_anywhere_is_size_only_evidence() -> None:
    m = FileMeta(path="c.json")
    merge_head(m, size=3, etag='"not-a-digest-123"')
    assert m.size == 3 and m.sha256 is None and m.blob_sha1 is None
    assert FileEntry(path="c.json", size=3).evidence == "size-only"


def test_etag_normalisation() -> None:
    assert normalize_etag(f'W/"{SHA1.upper()}"') == SHA1
    assert normalize_etag("") is None and normalize_etag(None) is None
