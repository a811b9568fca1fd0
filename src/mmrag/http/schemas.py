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


class ErrorDetail(BaseModel):
    """What went wrong, in OpenAI's error object (the fields its client reads)."""

    message: str = Field(description="What happened and what to do next.")
    type: str = Field(description="The error class, from the status: invalid_request_error, authentication_error, "
                                  "permission_error, not_found_error, rate_limit_error or server_error.")
    param: str | None = Field(None, description="The request field at fault, when one is (e.g. `n`, `k`).")
    code: str = Field(description="mmrag's stable machine-readable code, e.g. invalid_input, not_found, forbidden.")


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "param", "code"}}``, as OpenAI's API answers."""

    error: ErrorDetail


#: OpenAI's API calls nearly every 4xx ``invalid_request_error``; its client picks the exception class
#: from the status alone. A type per status (as vLLM and Anthropic's API do) tells a reader more.
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}


def error_type(status: int) -> str:
    """The OpenAI ``type`` of an error with HTTP ``status``."""
    if status >= 500:
        return "server_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON of every error response (the shape :class:`ErrorBody` documents)."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


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
    model: str | None = Field(None, max_length=200,
                              description="An id `/v1/models` lists: it selects the chat model and the answer "
                                          "mode, as on `/v1/chat/completions`; default the server's.")
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
        None, description="The calibrated gate's decision: p_answerable, threshold, features, calibration; "
                          "a grounding refusal (guard abstained:ungrounded) adds reason, missing, terms and scope.")
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


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(False, description="End the stream with a chunk whose `choices` is empty and "
                                                   "whose `usage` counts the answer's tokens.")


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions (OpenAI shape; unknown OpenAI fields are accepted and ignored).

    The last user message is the question (its image parts query by image); ``collection``
    (send it with the OpenAI client's ``extra_body``) names the knowledge base. ``model`` selects
    the mode (:mod:`mmrag.http.chat`).
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=200, description="An id from GET /v1/models; it selects how the answer is made: "
                                                   "`mmrag` (the server's default), a chat model's name (that model "
                                                   "generates) or `mmrag-extractive` (no language model).")
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, description="Choices to return; mmrag returns one, so n > 1 is a 400.")
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


class ChatUsage(BaseModel):
    """OpenAI's ``usage``: tokens counted with the answering model's tokenizer (:func:`mmrag.http.chat.usage_of`)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """OpenAI chat.completion, plus ``citations`` and ``mmrag`` (the guard's verdict)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The id from GET /v1/models that answered; the same in every stream chunk.")
    choices: list[ChatChoice]
    usage: ChatUsage
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
    #: The collection's redaction policy, and the values this upload's documents had replaced, by kind.
    redact: list[str] = []
    redactions: dict[str, int] = {}


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


class AccessRequest(BaseModel):
    """PUT /v1/documents/{doc_id}/access body: the document's labels from now on."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] = Field(default_factory=list, max_length=200,
                              description="group:NAME / user:NAME labels; [] makes the document unlabelled.")
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)


class AccessOut(BaseModel):
    """A document's access labels."""

    collection: str
    doc_id: str
    labels: list[str]
    records: int | None = None
