"""Request and response models of the HTTP API (kept apart from :mod:`mmrag.types`, which is internal)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Retriever = Literal["clip", "text", "bm25", "hybrid"]
Modality = Literal["text", "image", "all"]
Verify = Literal["off", "mark", "drop"]
AnswerMode = Literal["generate", "extractive", "auto"]
MetaValue = str | int | float | bool
#: Collection names, as registry.check_collection_name accepts them.
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,62}$"
#: What a read may name: a knowledge base (its live version) or one version of it, ``kb@3``.
READ_COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,62}(@[0-9]{1,6})?$"


class ErrorBody(BaseModel):
    """Every error response."""

    error: str = Field(description="Stable machine-readable code, e.g. invalid_input, not_found, forbidden.")
    message: str
    detail: Any = None


class Filters(BaseModel):
    """Metadata filters; all given fields must match."""

    model_config = ConfigDict(extra="forbid")

    source_prefix: str | None = Field(None, max_length=1024, description="Keep hits whose source path starts with this.")
    doc_type: str | None = Field(None, max_length=32, description="txt, markdown, html, pdf, docx, pptx, image, jsonl.")
    page: int | None = Field(None, ge=1, le=100_000)
    metadata: dict[str, MetaValue] = Field(default_factory=dict, description="Equality on any ingested metadata key.")


class QueryFields(BaseModel):
    """What a search or an answer is asked with."""

    model_config = ConfigDict(extra="forbid")

    collection: str | None = Field(None, pattern=READ_COLLECTION_PATTERN,
                                   description="Default: the server's collection. `kb@3` reads version 3 of `kb`.")
    image: str | None = Field(None, max_length=20_000_000,
                              description="An image as base64 or a data: URI (query by image, or text + image).")
    k: int = Field(5, ge=1, le=100)
    retriever: Retriever = "hybrid"
    modality: Modality = "all"
    filters: Filters | None = None
    dedupe: bool = Field(False, description="Keep only each document's best hit.")
    rerank: str | None = Field(
        None, max_length=300,
        description="Reread the top hits with a reranker the server offers (its MMRAG_RERANK__MODEL, or one of "
                    "MMRAG_RERANK__ALLOWED), e.g. `offline` or `litellm:cohere/rerank-v3.5`; `none` turns it "
                    "off. Default: the server's (none unless configured).")
    rerank_depth: int | None = Field(None, ge=1, le=1000,
                                     description="How many top hits the reranker rereads; default the server's.")


class SearchRequest(QueryFields):
    """POST /v1/search."""

    query: str | None = Field(None, max_length=8000, description="Query text; optional when an image is given.")
    k: int = Field(10, ge=1, le=100)


class HitOut(BaseModel):
    """One search result."""

    id: str
    doc_id: str
    source: str
    modality: str
    score: float
    page: int | None = None
    text: str | None = None
    image_uri: str | None = Field(None, description="Where an image hit's pixels are served (GET it with the same key).")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    """POST /v1/search result."""

    collection: str
    retriever: str
    hits: list[HitOut]
    took_ms: float
    version: str | None = Field(None, description="The version that answered, `kb@N`.")


class AnswerRequest(QueryFields):
    """POST /v1/answer."""

    question: str = Field(min_length=1, max_length=8000)
    model: str | None = Field(None, max_length=200, description="A LiteLLM model the server allows; default its own.")
    stream: bool = Field(False, description="Server-sent events: `delta` events, then one `answer` event.")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    verify: Verify = Field("off", description="Run the offline hallucination detector: mark or drop unsupported sentences.")
    answer_mode: AnswerMode | None = Field(
        None, description="generate (the chat model), extractive (the best context sentence, no LLM) or auto "
                          "(generate, extractive when that fails verification); default: the server's.")


class CitationOut(BaseModel):
    """A context block an answer stands on."""

    n: int = Field(description="The [n] marker in the answer text.")
    doc_id: str
    source: str
    page: int | None = None
    modality: str
    excerpt: str
    image_uri: str | None = None
    score: float


class UsageOut(BaseModel):
    """Token counts and cost (null when the provider has no price)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None


class AnswerResponse(BaseModel):
    """A grounded answer."""

    question: str
    answer: str
    abstained: bool = Field(description="True when the context did not hold the answer (the text says so).")
    guard: str = Field(description="supported | citation_added | citation_replaced | extractive | "
                                   "extractive_fallback:<why> | abstained:<why>")
    citations: list[CitationOut]
    verification: dict[str, Any] | None = Field(None, description="The detector's verdict when `verify` was on.")
    mode: str = Field("generate", description="How the text was made: generate or extractive.")
    abstention: dict[str, Any] | None = Field(
        None, description="The calibrated gate's decision: p_answerable, threshold, features, calibration.")
    model: str
    usage: UsageOut
    collection: str
    took_ms: float


# -- OpenAI-compatible chat completions -----------------------------------------------------------
class ChatContentPart(BaseModel):
    """A part of a multi-part message (text or image_url)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=32)
    text: str | None = Field(None, max_length=100_000)
    image_url: dict[str, Any] | str | None = None


class ChatMessage(BaseModel):
    """An OpenAI chat message."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ChatContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions (OpenAI shape; unknown OpenAI fields are accepted and ignored).

    The last user message is the question (its image parts query by image); ``collection``
    (send it with the OpenAI client's ``extra_body``) names the knowledge base.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    collection: str | None = Field(None, pattern=READ_COLLECTION_PATTERN)
    k: int = Field(5, ge=1, le=50)
    verify: Verify = "off"
    answer_mode: AnswerMode | None = None
    rerank: str | None = Field(None, max_length=300, description="As /v1/answer's `rerank`.")
    rerank_depth: int | None = Field(None, ge=1, le=1000)


class ChatChoiceMessage(BaseModel):
    """The assistant message."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """One choice (mmrag always returns one)."""

    index: int = 0
    message: ChatChoiceMessage
    finish_reason: str = "stop"


class ChatCompletionResponse(BaseModel):
    """OpenAI chat.completion, plus ``citations`` and ``mmrag`` (the guard's verdict)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]
    citations: list[CitationOut]
    mmrag: dict[str, Any]


class ModelOut(BaseModel):
    """GET /v1/models entry."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "mmrag"


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelOut]


# -- documents and collections ----------------------------------------------------------------------
class UploadResponse(BaseModel):
    """POST /v1/documents result: the ingestion summary of the uploaded files."""

    collection: str
    doc_ids: list[str]
    indexed: int
    unchanged: int
    failed: list[dict[str, Any]]
    skipped: list[dict[str, Any]]


class DeleteResponse(BaseModel):
    """DELETE /v1/documents/{doc_id} result."""

    collection: str
    doc_id: str
    deleted: bool


class CollectionOut(BaseModel):
    """One collection and its sizes."""

    name: str
    documents: int
    clip_records: int
    text_records: int


class CollectionList(BaseModel):
    """GET /v1/collections."""

    collections: list[CollectionOut]


class Health(BaseModel):
    """GET /healthz and /readyz."""

    status: str
    detail: str | None = None
