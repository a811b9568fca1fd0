"""Object URLs as sources (mmrag.sources): roots, stamps, storage options and the error translation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.config import Settings, SourceSettings
from mmrag.errors import InvalidInputError, LoadError, MissingDependencyError
from mmrag.lifecycle.roots import outside_roots
from mmrag.manifest import Manifest
from mmrag.sources import (
    SourceAccessError,
    SourceNotFoundError,
    SourceUnreachableError,
    is_url,
    normalize_url,
    object_stamp,
    source_root,
    storage_options,
)
from mmrag.sources.objects import translating


def test_urls_are_told_from_paths_and_kept_as_they_are() -> None:
    assert is_url("s3://bucket/docs") and is_url("GS://b/x") and is_url("https://host/a.pdf")
    assert not is_url("docs/s3:/x") and not is_url("/data/docs") and not is_url("file:///data/docs")
    assert normalize_url("S3://bucket/docs/") == "s3://bucket/docs"
    assert source_root("s3://bucket/docs/") == "s3://bucket/docs"  # not os.path.abspath's "/cwd/s3:/bucket/docs"
    with pytest.raises(InvalidInputError, match=r"'\.\.' are not allowed"):
        normalize_url("s3://bucket/docs/../secrets")


def test_url_sources_are_read_only_under_url_roots(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "manifest.sqlite3")
    try:
        manifest.add_roots("kb", ["s3://bucket/docs", str(tmp_path / "local")])
        sources = ["s3://bucket/docs/a.txt", "s3://bucket/docs/sub/b.pdf", "s3://bucket/docs",
                   "s3://bucket/docs2/c.txt",  # a sibling prefix that shares the root's first characters
                   "s3://other/docs/a.txt", "gs://bucket/docs/a.txt", "s3://bucket/docs/../private/k.txt",
                   str(tmp_path / "local" / "f.txt"), "/etc/passwd"]
        assert outside_roots(manifest, "kb", sources) == [
            "s3://bucket/docs2/c.txt", "s3://other/docs/a.txt", "gs://bucket/docs/a.txt",
            "s3://bucket/docs/../private/k.txt", "/etc/passwd"]
    finally:
        manifest.close()


def test_an_objects_stamp_changes_with_its_etag_and_size_and_fits_the_files_table() -> None:
    size, print_ = object_stamp(11, "5eb63bbbe01eeed093cb22bb8f5acdc3")
    assert size == 11 and 0 <= print_ < 2**63  # an SQLite INTEGER
    assert object_stamp(11, "5eb63bbbe01eeed093cb22bb8f5acdc3") == (size, print_)
    assert object_stamp(11, "5eb63bbbe01eeed093cb22bb8f5acdc4")[1] != print_
    assert object_stamp(12, "5eb63bbbe01eeed093cb22bb8f5acdc3") != (size, print_)


def test_storage_options_come_from_the_settings_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_SOURCE__ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MMRAG_SOURCE__REGION", "eu-west-1")
    monkeypatch.setenv("MMRAG_SOURCE__MAX_OBJECT_MB", "5")
    settings = Settings()
    assert settings.source.max_object_mb == 5
    assert storage_options(settings.source, {"anon": "TRUE", "profile": "minio"}) == {
        "endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-1"}, "anon": True,
        "profile": "minio"}
    assert storage_options(SourceSettings()) == {}


def _raised(url: str, exc: BaseException) -> BaseException:
    with pytest.raises(Exception) as info:
        with translating(url):
            raise exc
    return info.value


def test_store_exceptions_are_translated_with_the_url_and_what_to_do() -> None:
    botocore = pytest.importorskip("botocore.exceptions")
    url = "s3://bucket/docs"
    gone = _raised(url, FileNotFoundError("The specified bucket does not exist"))
    assert isinstance(gone, SourceNotFoundError) and url in str(gone) and "no such bucket" in str(gone)
    no_keys = _raised(url, botocore.NoCredentialsError())
    assert isinstance(no_keys, SourceAccessError) and "AWS_ACCESS_KEY_ID" in str(no_keys)
    denied = _raised(url, PermissionError("The AWS Access Key Id you provided does not exist in our records."))
    assert isinstance(denied, SourceAccessError) and "refused access" in str(denied)
    dead = _raised(url, botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket?list-type=2"))
    assert isinstance(dead, SourceUnreachableError) and "at http://127.0.0.1:1" in str(dead)
    assert "MMRAG_SOURCE__ENDPOINT_URL" in str(dead)
    wrapped = _raised(url, OSError("wrapped"))  # s3fs wraps some errors: the cause decides
    assert isinstance(wrapped, SourceUnreachableError)
    changed = _raised(url, type("FileExpired", (OSError,), {})("etag changed"))
    assert isinstance(changed, LoadError) and "changed while it was being read" in changed.reason


def test_a_scheme_without_its_package_names_it() -> None:
    missing = _raised("gs://bucket/docs", ImportError("Install gcsfs to access Google Storage"))
    assert isinstance(missing, MissingDependencyError) and "pip install gcsfs" in str(missing)
