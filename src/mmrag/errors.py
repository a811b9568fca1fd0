"""mmrag's exception hierarchy.

Every error mmrag raises derives from :class:`MmragError`; third-party exceptions are translated at
the backend edge (``raise XError(...) from exc``) and never cross a module boundary untranslated.

Tree::

    MmragError
    ├── ConfigError
    │   └── ModelUnavailableError       weights/model could not be loaded (offline? wrong path?)
    ├── MissingDependencyError (ImportError)
    ├── NotFoundError
    ├── InvalidInputError (ValueError)
    │   ├── LoadError                    a file could not be read/parsed; carries ``path`` and ``reason``
    │   │   └── BudgetExceededError      a document went over a budget (pages, images, OCR or load seconds)
    │   ├── PayloadTooLargeError         a request body or upload over the limit (413)
    │   └── UnsupportedMediaTypeError    an upload of a type mmrag cannot ingest (415)
    ├── UnauthorizedError                no or an unknown API key (401)
    ├── ForbiddenError                   the key lacks the scope or the collection (403)
    ├── EmbedderMismatchError            a collection was built with another embedding model
    ├── RedactionPolicyError             a write asks for another redaction policy than the collection's (409)
    ├── CanaryRefusedError               a promote's canary found the candidate worse (409)
    ├── StoreError                       a store failed (Chroma, the keyword index, the manifest)
    │   ├── StoreDamagedError            a store's files are damaged; the message names the rebuild
    │   ├── StoreBusyError               another process holds the writer lock or the embedded store (409)
    │   └── ForeignCollectionError       a shared server's collection belongs to another data dir (409)
    └── UpstreamError
        ├── RateLimitedError
        └── UpstreamTimeoutError
"""

from __future__ import annotations


class MmragError(Exception):
    """Root of mmrag's errors. ``code`` is stable; ``status_code`` maps to HTTP."""

    code = "mmrag_error"
    status_code = 500
    #: The request field at fault, when one is (the HTTP API reports it as OpenAI's ``param``).
    param: str | None = None


class ConfigError(MmragError):
    """The configuration is invalid or inconsistent."""

    code = "config_error"
    status_code = 500


class ModelUnavailableError(ConfigError):
    """A model's weights could not be loaded (no network, bad path, bad checkpoint)."""

    code = "model_unavailable"
    status_code = 503


class MissingDependencyError(MmragError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    code = "missing_dependency"
    status_code = 500


class NotFoundError(MmragError):
    """A document, collection or file does not exist."""

    code = "not_found"
    status_code = 404


class InvalidInputError(MmragError, ValueError):
    """The caller passed something mmrag cannot use."""

    code = "invalid_input"
    status_code = 400


class LoadError(InvalidInputError):
    """A file could not be loaded. ``path`` names it, ``reason`` says why in plain words."""

    code = "load_error"
    status_code = 422

    def __init__(self, path: str, reason: str, *, skipped: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        #: True when the file is not an error but has nothing to index (empty, image-only scan).
        self.skipped = skipped


class BudgetExceededError(LoadError):
    """A document went over one of its budgets; ``budget`` names which, ``setting`` how to raise it.

    The reason (kept in the document's failure row) reads like "over the page budget: 2,500
    pages > 2,000 per document; raise MMRAG_INGEST__MAX_PAGES to index it".
    """

    code = "budget_exceeded"
    status_code = 422

    def __init__(self, path: str, budget: str, found: str, limit: str, setting: str) -> None:
        super().__init__(path, f"over the {budget} budget: {found} > {limit} per document; raise {setting} to index it")
        self.budget = budget
        self.setting = setting


class PayloadTooLargeError(InvalidInputError):
    """A request body or uploaded file is larger than the server accepts."""

    code = "payload_too_large"
    status_code = 413


class UnsupportedMediaTypeError(InvalidInputError):
    """An uploaded file is of a type mmrag cannot ingest."""

    code = "unsupported_media_type"
    status_code = 415


class UnauthorizedError(MmragError):
    """No API key, or one the server does not know."""

    code = "unauthorized"
    status_code = 401


class ForbiddenError(MmragError):
    """The API key is valid but lacks the scope or the collection the request needs."""

    code = "forbidden"
    status_code = 403


class EmbedderMismatchError(MmragError):
    """A collection was built with a different embedding model than the one configured."""

    code = "embedder_mismatch"
    status_code = 409


class RedactionPolicyError(MmragError):
    """A write asks for another redaction policy than the one the collection was built with (reindex instead)."""

    code = "redaction_policy_mismatch"
    status_code = 409


class CanaryRefusedError(MmragError):
    """A promote's canary found the candidate version worse than the live one (``--force`` overrides)."""

    code = "canary_refused"
    status_code = 409


class StoreError(MmragError):
    """A store failed: Chroma, the keyword index or the manifest (the message names which).

    ``transient`` is true when the same request may well succeed if sent again (a Chroma server
    refused or dropped the connection, timed out, or answered 5xx/429); writers retry those.
    """

    code = "store_error"
    status_code = 503
    transient = False


class StoreDamagedError(StoreError):
    """A store's files are damaged or disagree with the manifest; the message says how to rebuild."""

    code = "store_damaged"
    status_code = 503


class StoreBusyError(StoreError):
    """Another process holds what this one needs (the writer lock, an embedded store); names the holder."""

    code = "store_busy"
    status_code = 409


class ForeignCollectionError(StoreError):
    """A Chroma server's collection is owned by another mmrag data dir; this one will not write to it."""

    code = "foreign_collection"
    status_code = 409


class UpstreamError(MmragError):
    """A remote service (LLM provider, Chroma server) failed."""

    code = "upstream_error"
    status_code = 502


class RateLimitedError(UpstreamError):
    """The upstream service refused the call for rate limits."""

    code = "rate_limited"
    status_code = 429


class UpstreamTimeoutError(UpstreamError):
    """The upstream service did not answer in time."""

    code = "upstream_timeout"
    status_code = 504


#: Free space under which a failed write names the disk as its likely cause.
LOW_SPACE_BYTES = 256 * 1024 * 1024


def disk_full_hint(path: object) -> str:
    """" (the disk holding PATH has only ... free ...)" when ``path``'s filesystem is low on space, else "".

    Chroma and tantivy report a full disk as whatever write failed first ("Error in compaction"),
    and roll their writes back, so the space is free again by the time the error arrives: what
    is left says little about what the write needed (a batch of a few hundred records can need
    tens of MiB). Low space, under 256 MiB, is therefore reported as the likely cause.
    """
    import shutil

    try:
        usage = shutil.disk_usage(str(path))
    except OSError:
        return ""
    if usage.free >= LOW_SPACE_BYTES:
        return ""
    return (f" (the disk holding {path} has only {usage.free // (1024 * 1024)} MiB free, "
            f"{100 * usage.free / usage.total:.0f}% of it: a full disk is the likely cause. Free some space and rerun: "
            "what was stored is kept, and the interrupted documents are redone)")
