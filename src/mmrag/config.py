"""Settings, read once at the edge (CLI callback, app factory) and passed down as plain values.

Environment variables use the ``MMRAG_`` prefix and ``__`` for nesting, e.g.
``MMRAG_DATA_DIR=/srv/kb``, ``MMRAG_PROFILE=offline``, ``MMRAG_CLIP__MODEL=ViT-B-16``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["default", "offline"]


class ClipSettings(BaseModel):
    """The joint text/image model. ``None`` fields take the profile's choice."""

    model: str | None = None
    pretrained: str | None = None
    #: ``auto`` times fp32, bf16 and int8 (torch's x86 kernels, and oneDNN's: ``int8-onednn``; fp16 on a
    #: GPU) per tower and keeps the fastest that agrees with fp32 (mmrag.numerics); a name forces it,
    #: still checked against fp32.
    precision: Literal["auto", "bf16", "fp16", "fp32", "int8", "int8-onednn"] = "auto"
    #: Where the models run: ``cpu``, ``cuda`` or ``auto`` (cuda when torch sees a GPU). MMRAG_CLIP__DEVICE.
    device: str = "cpu"
    batch_size: int = Field(32, ge=1, le=1024)


class TextSettings(BaseModel):
    """The prose text model (sentence-transformers name or local folder)."""

    model: str | None = None
    batch_size: int = Field(64, ge=1, le=4096)


class StoreSettings(BaseModel):
    """Where vectors live: embedded Chroma under the data dir, or a Chroma server URL."""

    url: str | None = None
    #: Seconds a writer waits for another writer of the same collection (MMRAG_STORE__LOCK_TIMEOUT).
    lock_timeout: float = Field(600.0, ge=0)
    #: Seconds a Chroma server request may take before it fails (MMRAG_STORE__TIMEOUT).
    timeout: float = Field(120.0, gt=0)


class LLMSettings(BaseModel):
    """The chat model: any LiteLLM model string; ``mmrag-local/...`` is the in-process offline model."""

    model: str = "mmrag-local/smollm2-135m"
    timeout: float = Field(60.0, gt=0)
    num_retries: int = Field(2, ge=0)
    fallbacks: list[str] = []
    #: An OpenAI-compatible server's base URL (vLLM, llama.cpp server, LM Studio...).
    api_base: str | None = None


class AnswerSettings(BaseModel):
    """How answers are made, and when they are refused (see :mod:`mmrag.answering`).

    ``mode``: ``generate`` (the chat model), ``extractive`` (the context sentence closest to the
    question; no LLM) or ``auto`` (generate; the extractive answer when the generated one fails the
    guard or the detector). None: ``extractive`` for the in-process offline model
    (``mmrag-local/...``, whose generated answers are rarely right), ``generate`` for any other.
    ``MMRAG_ANSWER__MODE=auto``.
    """

    mode: Literal["generate", "extractive", "auto"] | None = None
    #: The calibrated abstention gate (:class:`~mmrag.answering.guard.AbstentionGate`), which reads the
    #: offline reader's answerability. None: on for the extractive and auto modes, off for generate
    #: (a capable model's own refusal is believed). ``MMRAG_ANSWER__GATE=true`` with ``generate``
    #: runs it before the call: when no passage answers, "I don't know" and no LLM call.
    gate: bool | None = None
    #: Refuse below this estimated probability that the context holds the answer; None: the
    #: calibration's own threshold (0.5).
    abstain_threshold: float | None = Field(None, gt=0, lt=1)
    #: A calibration file written by ``eval/calibrate_abstention.py``; None: the one mmrag ships.
    calibration: Path | None = None
    #: The grounding check (:mod:`mmrag.answering.grounding`): refuse a question that names an entity,
    #: number or quoted string the ``cited`` documents (or the whole ``context``) never mention. None:
    #: the calibration's own choice (the shipped one: off, because on HaluEval it refused a third of the
    #: answerable questions, whose bridging entity their passage leaves out; see docs/reranking.md).
    grounding: Literal["off", "cited", "context"] | None = None


class ChunkSettings(BaseModel):
    """Chunk size and overlap in word/punctuation tokens."""

    size: int = Field(200, ge=16)
    overlap: int = Field(40, ge=0)


class IngestSettings(BaseModel):
    """What one document may cost to ingest (:class:`~mmrag.loaders.LoaderLimits`).

    A document over a budget fails, and its failure row names the budget and the variable that
    raises it, e.g. ``MMRAG_INGEST__MAX_PAGES=5000``.
    """

    #: Pages of a PDF, or slides of a PPTX.
    max_pages: int = Field(2_000, ge=1)
    #: Embedded images kept for embedding (and OCR).
    max_images: int = Field(1_000, ge=0)
    #: Seconds of OCR.
    max_ocr_seconds: float = Field(600.0, ge=0)
    #: Seconds to load the document: parsing, rendering and OCR (embedding is bounded by the above).
    max_seconds: float = Field(1_200.0, ge=0)
    #: Images whose long side is over this many times their short side are skipped (ingest) or
    #: refused (query images get the default): resizing them for the embedder blows them up.
    max_image_aspect: float = Field(20.0, ge=1)


class ApiSettings(BaseModel):
    """``mmrag serve``: where it listens, who may call it, and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    #: Bearer-token auth. Turning it off is for a laptop, never for a shared host.
    auth: bool = True
    #: The key file; default ``<data_dir>/api_keys.json``.
    keys_file: Path | None = None
    max_upload_mb: float = Field(50.0, gt=0)
    #: LiteLLM models a request may pick with its ``model`` field, besides ``llm.model``.
    models: list[str] = []
    #: Seconds a request waits for the models to finish loading at start-up before a 503.
    ready_timeout: float = Field(600.0, gt=0)
    #: HTTPS: a PEM certificate (chain) and its unencrypted PEM key (MMRAG_API__TLS_CERT, MMRAG_API__TLS_KEY).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The access log (:mod:`mmrag.http.access`): a file (None: ``<data_dir>/access.log``), ``-``
    #: for stdout, or ``off``. MMRAG_API__ACCESS_LOG.
    access_log: str | None = None
    #: Size at which the access log's file rotates, and how many rotated files are kept.
    access_log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    access_log_backups: int = Field(5, ge=0, le=1000)
    #: Write each request's query text to the access log (off: the log never holds what was asked).
    access_log_queries: bool = False


class AccessSettings(BaseModel):
    """Per-document access (:mod:`mmrag.security`): unlabelled documents, and a trusted identity provider."""

    #: What a document without labels is to a key or token with groups: ``public`` (every caller
    #: reads it, the default) or ``private`` (only unrestricted callers). MMRAG_ACCESS__UNLABELLED.
    unlabelled: Literal["public", "private"] = "public"
    #: A JWT verification key: a PEM public key file, or a JWKS file (never fetched from a URL).
    jwt_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: The claim holding the caller's groups (a list, or a string of comma-separated names).
    jwt_groups_claim: str = "groups"
    jwt_algorithms: list[str] = ["RS256", "ES256", "EdDSA"]
    #: Collections a token may read (tokens grant the ``read`` scope only).
    jwt_collections: list[str] = ["*"]


class RetrievalWeights(BaseModel):
    """Reciprocal-rank-fusion weight of each index in hybrid search (0 leaves an index out).

    Plain RRF (all 1) is the default; why, and why CLIP votes only on images for text queries, is
    in :mod:`mmrag.retrieval`. ``MMRAG_RETRIEVAL__WEIGHTS__CLIP=0.5`` changes one.
    """

    model_config = ConfigDict(extra="forbid")

    clip: float = Field(1.0, ge=0)
    text: float = Field(1.0, ge=0)
    bm25: float = Field(1.0, ge=0)


class RetrievalSettings(BaseModel):
    """Search defaults: fusion weights, hits per query, candidates per index, and the RRF constant.

    ``rrf_k`` is 5, not the textbook 60: the reasoning and the cross-validation are in :mod:`mmrag.retrieval`.
    """

    weights: RetrievalWeights = RetrievalWeights()
    k: int = Field(10, ge=1, le=1000)
    depth: int = Field(100, ge=1, le=10_000)
    rrf_k: int = Field(5, ge=0, le=1000)


class RerankSettings(BaseModel):
    """The rerank stage after retrieval (:mod:`mmrag.rerank`): which model rereads the top hits.

    ``model`` names a backend (:func:`mmrag.registry.build_reranker`): ``offline`` (the bundled
    MiniLM reading each sentence of a hit, fused with the first stage), ``cross-encoder:<hub name
    or folder>`` (sentence-transformers), or ``litellm:<provider>/<model>`` (any provider of
    ``litellm.rerank``: Cohere, Jina, Voyage...).
    None: no rerank. ``MMRAG_RERANK__MODEL=cross-encoder:/models/bge-reranker-base``,
    ``MMRAG_RERANK__DEPTH=20``.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    #: How many of the first stage's top hits are reread (the rest keep their order below them).
    depth: int = Field(30, ge=1, le=1000)
    #: Seconds a hosted reranker (litellm) may take per call; always passed (litellm's default is 6000 s).
    timeout: float = Field(30.0, gt=0)
    #: A hosted reranker's base URL (a self-hosted Cohere-compatible server, a proxy...).
    api_base: str | None = None
    #: A hosted reranker's key; None lets litellm read the provider's own variable (COHERE_API_KEY...).
    api_key: SecretStr | None = None
    #: Tokens a cross-encoder reads per (query, passage) pair; None: the model's own limit.
    max_length: int | None = Field(None, ge=16, le=8192)
    #: Reranker numerics: ``auto`` times fp32 and the candidates (bf16, int8, int8-onednn on a CPU; fp16 on a GPU) on
    #: this machine and keeps the fastest that agrees with fp32 (:mod:`mmrag.numerics`).
    precision: Literal["auto", "bf16", "fp16", "fp32", "int8", "int8-onednn"] = "auto"
    batch_size: int = Field(32, ge=1, le=1024)
    #: Other rerankers an API request's ``rerank`` field may name, besides ``model`` (each built once).
    allowed: list[str] = []


class LifecycleSettings(BaseModel):
    """Versions, the canary gate, probes and drift (:mod:`mmrag.lifecycle`).

    ``MMRAG_LIFECYCLE__CANARY_BUDGET=0.05`` lets a promote lose up to 5 points of probe recall.
    """

    #: The most a metric (probe recall, or an evaluation metric) may drop from the live version to
    #: the candidate before ``promote`` refuses. 0: the candidate must be at least as good.
    canary_budget: float = Field(0.0, ge=0, le=1)
    #: An evaluation dataset (JSONL, as ``mmrag eval run`` reads) that ``promote`` also runs on both versions.
    eval_dataset: Path | None = None
    #: ``mmrag serve`` runs every collection's probes this often (0: never).
    probe_interval_minutes: float = Field(5.0, ge=0)
    #: Drift score above which ``mmrag drift`` reports drift (and exits 4 with ``--fail``).
    drift_threshold: float = Field(0.2, ge=0)
    #: How many of the most recent documents' records (and queries) the drift score compares.
    drift_recent: int = Field(500, ge=10)


class SourceSettings(BaseModel):
    """Object storage sources (``mmrag ingest s3://bucket/prefix``, ``gs://``, ``https://``), read through fsspec.

    Credentials come from the usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE``, ``~/.aws``, an instance role) unless ``options`` names them. Set through
    ``MMRAG_SOURCE__ENDPOINT_URL`` (a MinIO or other S3-compatible server) and friends, or
    ``mmrag ingest --storage-option key=value``.
    """

    #: An S3-compatible server instead of AWS (``http://127.0.0.1:9000`` for MinIO).
    endpoint_url: str | None = None
    #: The bucket's region (``us-east-1`` ...), when the client cannot find it.
    region: str | None = None
    #: Read public buckets without credentials.
    anon: bool = False
    #: Further keyword arguments of the fsspec file system (s3fs's ``profile``, ``requester_pays``...).
    options: dict[str, str] = {}
    #: Objects larger than this are refused before they are read (``--max-file-mb`` applies too).
    max_object_mb: int = Field(200, ge=1)


class Settings(BaseSettings):
    """All of mmrag's configuration."""

    model_config = SettingsConfigDict(env_prefix="MMRAG_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path(".mmrag")
    profile: Profile = "default"
    collection: str = "default"
    max_file_mb: int = Field(200, ge=1)
    clip: ClipSettings = ClipSettings()
    text: TextSettings = TextSettings()
    store: StoreSettings = StoreSettings()
    chunk: ChunkSettings = ChunkSettings()
    ingest: IngestSettings = IngestSettings()
    source: SourceSettings = SourceSettings()
    llm: LLMSettings = LLMSettings()
    answer: AnswerSettings = AnswerSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    rerank: RerankSettings = RerankSettings()
    api: ApiSettings = ApiSettings()
    access: AccessSettings = AccessSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
