"""mmrag: multimodal retrieval-augmented generation.

Public API::

    from mmrag import KnowledgeBase, Indexer, Searcher, Query, Settings, resolve_models
"""

from mmrag.chunking import ChunkSpec, SentenceChunker
from mmrag.config import Settings
from mmrag.embedders.openclip import ClipSpec, OpenClipEmbedder
from mmrag.embedders.sentence import SentenceTransformerEmbedder, offline_minilm_dir
from mmrag.filters import SearchFilter
from mmrag.fusion import rrf
from mmrag.stores.chroma import ChromaStore, open_client
from mmrag.errors import (
    ConfigError,
    EmbedderMismatchError,
    InvalidInputError,
    LoadError,
    MissingDependencyError,
    MmragError,
    ModelUnavailableError,
    NotFoundError,
    RedactionPolicyError,
    StoreError,
    UpstreamError,
)
from mmrag.evaluation import (
    EvalConfig,
    EvalQuery,
    EvalRun,
    JudgeConfig,
    check_gates,
    compare_runs,
    evaluate_dataset,
    evaluate_retrieval,
    load_dataset,
    load_report,
    ndcg_at,
    parse_gates,
    precision_at,
    run_evaluation,
    write_reports,
)
from mmrag.answering import ABSTAIN_TEXT, ANSWER_MODES, Answer, Answerer, Citation
from mmrag.answering.extractive import Extractor
from mmrag.answering.guard import AbstentionGate
from mmrag.answering.grounding import check_grounding
from mmrag.indexing import Indexer, IngestSummary
from mmrag.llms import Message
from mmrag.llms.litellm import LiteLLMChatModel
from mmrag.loaders.ocr import read_text
from mmrag.kb import KnowledgeBase
from mmrag.logs import configure_logging
from mmrag.numerics import INT8_ENGINES, quantize_linear_int8
from mmrag.protocols import Reranker
from mmrag.reader import OfflineReader, ReaderSettings
from mmrag.redaction import Redactor
from mmrag.registry import (ModelChoice, answer_mode, answer_options, answer_stop, build_chat_model, build_reranker,
                            resolve_models)
from mmrag.retrieval import Searcher
from mmrag.security import Caller
from mmrag.security.relabel import set_labels
from mmrag.security.rules import AccessRules
from mmrag.types import Chunk, Document, Hit, ImageAsset, Query, Record, TextBlock

# Sorted (tests/test_public_api.py compares it with every public name of this module).
__all__ = [
    "ABSTAIN_TEXT", "ANSWER_MODES", "AbstentionGate", "AccessRules", "Answer", "Answerer", "Caller",
    "ChromaStore", "Chunk", "ChunkSpec", "Citation", "ClipSpec", "ConfigError", "Document",
    "EmbedderMismatchError", "EvalConfig", "EvalQuery", "EvalRun", "Extractor", "Hit", "INT8_ENGINES",
    "ImageAsset", "Indexer", "IngestSummary", "InvalidInputError", "JudgeConfig", "KnowledgeBase",
    "LiteLLMChatModel", "LoadError", "Message", "MissingDependencyError", "MmragError", "ModelChoice",
    "ModelUnavailableError", "NotFoundError", "OfflineReader", "OpenClipEmbedder", "Query", "ReaderSettings",
    "Record", "RedactionPolicyError", "Redactor", "Reranker", "SearchFilter", "Searcher", "SentenceChunker",
    "SentenceTransformerEmbedder", "Settings", "StoreError", "TextBlock", "UpstreamError", "answer_mode",
    "answer_options", "answer_stop", "build_chat_model", "build_reranker", "check_gates", "check_grounding",
    "compare_runs", "configure_logging", "evaluate_dataset", "evaluate_retrieval", "load_dataset",
    "load_report", "ndcg_at", "offline_minilm_dir", "open_client", "parse_gates", "precision_at",
    "quantize_linear_int8", "read_text", "resolve_models", "rrf", "run_evaluation", "set_labels",
    "write_reports",
]
__version__ = "0.1.0"
