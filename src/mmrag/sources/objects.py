"""Objects in object storage (``s3://``, ``gs://``, ``https://``) as sources to ingest, through fsspec.

An object URL plays the part a file's path plays: it is the document's ``source``, and its doc id
is the key relative to the prefix that was ingested, as a file's is its path relative to the
ingested folder. :func:`list_objects` lists a prefix (metadata only: nothing is downloaded);
:class:`ObjectRef` carries what the listing said (size, ETag) and the storage options, so a Ray
worker can read the object itself. :func:`object_stamp` folds size and ETag into the
``(size, mtime_ns)`` stamp the manifest keeps for files, so an unchanged object is not read again.

Every fsspec, botocore or aiohttp exception is translated here, at the edge
(:func:`translating`): a bucket that does not exist, missing or refused credentials and an
unreachable endpoint each become an mmrag error that names the URL and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmrag.errors import (
    ConfigError,
    InvalidInputError,
    LoadError,
    MissingDependencyError,
    MmragError,
    NotFoundError,
    UpstreamError,
)
from mmrag.loaders._common import SUPPORTED_SUFFIXES, mb
from mmrag.loaders.discovery import DiscoveryProblem

#: The fsspec packages that read each scheme (s3fs is the ``mmrag[s3]`` extra).
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "az": "adlfs", "abfs": "adlfs"}
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
#: How long an S3 client waits to connect, and how often it tries, before the endpoint counts as
#: unreachable (botocore's defaults, 60 s and 5 attempts, kept a dead endpoint's ingest waiting minutes).
S3_CONFIG = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}


class SourceNotFoundError(NotFoundError):
    """A bucket, prefix or object that does not exist."""

    code = "source_not_found"


class SourceAccessError(ConfigError):
    """The object store refused the credentials, or none were found."""

    code = "source_access_denied"
    status_code = 403


class SourceUnreachableError(UpstreamError):
    """The object store's endpoint did not answer (down, wrong URL, no network)."""

    code = "source_unreachable"


def is_url(source: object) -> bool:
    """Whether ``source`` is an object URL (``s3://``, ``gs://``, ``https://``...) rather than a local path."""
    match = _SCHEME.match(str(source))
    return bool(match) and match.group(1).lower() != "file"


def normalize_url(url: str) -> str:
    """``url`` with its scheme in lower case and no trailing ``/`` (the form roots and sources are kept in)."""
    match = _SCHEME.match(url)
    if not match:
        raise InvalidInputError(f"{url!r} is not an object URL (s3://bucket/prefix, gs://..., https://...)")
    rest = url[match.end():].rstrip("/")
    if any(part in {".", ".."} for part in rest.split("/")[1:]):
        # A server may resolve them, so a URL with them could name something outside its prefix.
        raise InvalidInputError(f"{url}: '.' and '..' are not allowed in an object URL; write the prefix out")
    return f"{match.group(1).lower()}://{rest}"


def storage_options(settings: Any, extra: Mapping[str, str] = {}) -> dict[str, Any]:  # noqa: B006 - read only
    """The fsspec file system's keyword arguments from :class:`mmrag.config.SourceSettings` and ``--storage-option``.

    ``"true"``/``"false"`` become booleans; everything else is passed as given (s3fs's ``key``,
    ``secret``, ``profile``, ``endpoint_url``...).

    Example:
        >>> from mmrag.config import SourceSettings
        >>> storage_options(SourceSettings(endpoint_url="http://127.0.0.1:9000"), {"anon": "true"})
        {'endpoint_url': 'http://127.0.0.1:9000', 'anon': True}
    """
    out: dict[str, Any] = {}
    if settings.endpoint_url:
        out["endpoint_url"] = settings.endpoint_url
    if settings.region:
        out["client_kwargs"] = {"region_name": settings.region}
    if settings.anon:
        out["anon"] = True
    for key, value in {**settings.options, **extra}.items():
        out[key] = {"true": True, "false": False}.get(str(value).lower(), value)
    return out


@dataclass(frozen=True)
class ObjectRef:
    """An object found by :func:`list_objects`, ready for :func:`mmrag.indexing.steps.load_file`.

    It stands where a :class:`~mmrag.loaders.FileRef` does: ``str(ref.path)`` is the source.

    Attributes:
        path: The object's URL (``s3://bucket/prefix/a/b.pdf``).
        root: The URL of the ingested prefix; for an object given directly, its parent.
        doc_id: ``path`` relative to ``root``.
        suffix: The key's suffix in lower case.
        size: Its size in bytes, as listed.
        etag: Its ETag as listed (``""`` when the store gives none).
        options: The fsspec storage options to read it with (not shown in a repr: they may hold a secret).
    """

    path: str
    root: str
    doc_id: str
    suffix: str
    size: int
    etag: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def stamp(self) -> tuple[int, int]:
        """``(size, ETag fingerprint)``: what the manifest keeps as a file's ``(size, mtime_ns)``."""
        return object_stamp(self.size, self.etag)


def object_stamp(size: int, etag: str) -> tuple[int, int]:
    """An object's size and a 63-bit fingerprint of its ETag, in the shape of a file's ``(size, mtime_ns)`` stamp."""
    return size, int.from_bytes(hashlib.sha256(etag.encode()).digest()[:8], "big") >> 1


def filesystem(url: str, options: Mapping[str, Any]) -> Any:
    """The fsspec file system for ``url``'s scheme (fsspec keeps one per scheme and options per process)."""
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    kwargs = dict(options)
    if PACKAGES.get(scheme) == "s3fs":
        kwargs["config_kwargs"] = {**S3_CONFIG, **kwargs.get("config_kwargs", {})}
        # fsspec keeps one file system per process; a listing it cached would make a later run (a
        # server's next upload) read an object by an ETag it no longer has.
        kwargs.setdefault("use_listings_cache", False)
    with translating(url):
        return fsspec.filesystem(scheme, **kwargs)


def fs_path(fs: Any, url: str) -> str:
    """``url`` as the file system names it (``bucket/key`` for s3fs; http keeps the whole URL)."""
    return url if url.split("://", 1)[0].lower() in {"http", "https"} else fs._strip_protocol(url)


def _url(scheme: str, name: str) -> str:
    return name if _SCHEME.match(name) else f"{scheme}://{name}"


def etag_of(info: Mapping[str, Any]) -> str:
    """The version tag of an object's listing or ``info``: its ETag, else whatever the store gives."""
    for key in ("ETag", "etag", "md5Hash", "Content-MD5", "Last-Modified"):
        if info.get(key):
            return str(info[key]).strip('"')
    return ""


def list_objects(url: str, options: Mapping[str, Any], *, max_bytes: int) -> Iterator[ObjectRef | DiscoveryProblem]:
    """List the objects under ``url`` (a prefix, or one object) and yield what can be ingested.

    Only metadata is read. Keys are yielded in sorted order; folder markers (keys ending in ``/``)
    and keys with a hidden part (``.git/...``) are passed over, as a folder walk passes over hidden
    files; an unsupported type or an object over ``max_bytes`` is a :class:`DiscoveryProblem`.

    Raises:
        SourceNotFoundError: the bucket does not exist.
        SourceAccessError: credentials are missing or refused.
        SourceUnreachableError: the endpoint does not answer.
    """
    root = normalize_url(url)
    scheme = root.split("://", 1)[0]
    fs = filesystem(root, options)
    path = fs_path(fs, root)
    with translating(root):
        if scheme in {"http", "https"} and fs.isfile(path):
            found = {path: fs.info(path)}  # fsspec's http "listing" scrapes a page's links
        else:
            found = fs.find(path, detail=True)
        if not found and "/" not in path.strip("/") and not fs.exists(path):
            raise FileNotFoundError(path)  # a bucket's empty listing does not say whether it exists
    if len(found) == 1 and next(iter(found)).rstrip("/") == path.rstrip("/"):
        root = posixpath.dirname(root)  # one object given directly: its id is its name
        path = fs_path(fs, root)
    if not found:
        yield DiscoveryProblem(root, "no objects under this prefix (check the bucket and prefix)")
        return
    for name in sorted(found):
        info = found[name]
        if name.endswith("/") or info.get("type") == "directory":
            continue
        full = _url(scheme, name)
        rel = full[len(root) + 1:] if full.startswith(root + "/") else posixpath.basename(name)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        suffix = posixpath.splitext(name)[1].lower()
        size = int(info.get("size") or info.get("Size") or 0)
        if suffix not in SUPPORTED_SUFFIXES:
            kind = f"'{suffix}'" if suffix else "(no extension)"
            yield DiscoveryProblem(full, f"unsupported file type {kind}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        elif size > max_bytes:
            yield DiscoveryProblem(full, f"object is {mb(size)}, over the {mb(max_bytes)} limit "
                                         "(--max-file-mb, MMRAG_SOURCE__MAX_OBJECT_MB)")
        else:
            yield ObjectRef(full, root, rel, suffix, size, etag_of(info), dict(options))


def head_object(url: str, options: Mapping[str, Any]) -> tuple[int, str] | None:
    """``(size, ETag)`` of one object, or ``None`` when it no longer exists (for repair and reindex)."""
    fs = filesystem(url, options)
    try:
        with translating(url):
            info = fs.info(fs_path(fs, url))
    except SourceNotFoundError:
        return None
    return int(info.get("size") or 0), etag_of(info)


def ref_for(url: str, doc_id: str, options: Mapping[str, Any]) -> ObjectRef | None:
    """The object a document came from, with the doc id it was given; ``None`` when it is gone.

    The root is the URL less the doc id (as for a file), except for JSONL, whose records carry
    their own ids.
    """
    found = head_object(url, options)
    if found is None:
        return None
    nested = url.endswith("/" + doc_id) and not url.lower().endswith(".jsonl")
    root = url[: len(url) - len(doc_id) - 1] if nested else posixpath.dirname(url)
    return ObjectRef(url, root, url[len(root) + 1:], posixpath.splitext(url)[1].lower(), found[0], found[1],
                     dict(options))


# -- errors ----------------------------------------------------------------------------------------
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError",
                "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "TimeoutError",
                "ProxyConnectionError", "SSLError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "ProfileNotFound"}
# S3's error codes for refused credentials (s3fs turns a bare 403 into a PermissionError itself).
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken")


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _caused(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


@contextlib.contextmanager
def translating(url: str) -> Iterator[None]:
    """Turn fsspec's, botocore's and aiohttp's exceptions into mmrag errors that name ``url`` and what to do.

    Raises:
        SourceNotFoundError: the bucket or object does not exist.
        SourceAccessError: no credentials, or the store refused them.
        SourceUnreachableError: the endpoint did not answer; also any other store failure.
        MissingDependencyError: the scheme's fsspec package is not installed.
        InvalidInputError: fsspec knows no such scheme.
    """
    try:
        yield
    except MmragError:
        raise
    except ImportError as exc:
        scheme = url.split("://", 1)[0].lower()
        package = PACKAGES.get(scheme, "the fsspec package for it")
        extra = " (or pip install 'mmrag[s3]')" if package == "s3fs" else ""
        raise MissingDependencyError(f"{url}: reading {scheme}:// URLs needs {package}: pip install {package}{extra}") from exc
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise OSError subclasses, botocore and aiohttp their own
        raise _translate(url, exc) from exc


def _translate(url: str, exc: Exception) -> MmragError:
    chain = list(_caused(exc))
    names = set().union(*(_names(e) for e in chain))
    text = " ".join(str(e) for e in chain)
    if isinstance(exc, ValueError) and "protocol not known" in str(exc).lower():
        return InvalidInputError(f"{url}: unknown URL scheme; use s3://, gs:// or https://")
    if names & _NO_CREDENTIALS:
        return SourceAccessError(
            f"{url}: no credentials found for the object store. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE), pass --storage-option key=... --storage-option secret=..., or --storage-option "
            "anon=true for a public bucket")
    if isinstance(exc, PermissionError) or any(code in text for code in _CREDENTIAL_CODES):
        return SourceAccessError(
            f"{url}: the object store refused access ({_brief(exc)}). Check the credentials (AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE, --storage-option key=/secret=) and that they may list and read this bucket")
    if names & _UNREACHABLE or "Could not connect" in text:
        endpoint = _endpoint(text)
        return SourceUnreachableError(
            f"{url}: the object store{endpoint} did not answer ({_brief(exc)}). Check that it is running and the "
            "endpoint (MMRAG_SOURCE__ENDPOINT_URL or --storage-option endpoint_url=...), then rerun: documents "
            "already indexed are kept, and the rerun picks up where this one stopped")
    if "FileExpired" in names or "PreconditionFailed" in text:
        return LoadError(url, "the object changed while it was being read; the next run reads the new version")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        bucket = "bucket" if "bucket" in text.lower() else "object or bucket"
        return SourceNotFoundError(f"{url}: no such {bucket} ({_brief(exc)}). Check the bucket name and prefix "
                                   "(and the endpoint, for a MinIO or other S3-compatible server)")
    return SourceUnreachableError(f"{url}: the object store failed ({type(exc).__name__}: {_brief(exc)}); rerun "
                                  "later: documents already indexed are kept")


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _endpoint(text: str) -> str:
    match = re.search(r'endpoint URL: "([^"]+)"', text)
    if not match:
        return ""
    scheme, _, rest = match.group(1).partition("://")
    return f" at {scheme}://{rest.split('/', 1)[0]}"
