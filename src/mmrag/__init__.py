"""mmrag: multimodal retrieval-augmented generation.

Public API::

    from mmrag import KnowledgeBase, Indexer, Searcher, Query, Settings, resolve_models
"""

from mmrag.chunking import ChunkSpec, SentenceChunker
from mmrag.config import Settings
from mmrag.embedders.openclip import ClipSpec, OpenClipEmbedder
from mmrag.embedders.sentence import SentenceTransformerEmbedder, offline_minilm_dir
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
from mmrag.extractive import AbstentionGate, Extractor
from mmrag.indexing import Indexer, IngestSummary
from mmrag.llms import Message
from mmrag.llms.litellm import LiteLLMChatModel
from mmrag.kb import KnowledgeBase
from mmrag.logs import configure_logging
from mmrag.protocols import Reranker
from mmrag.reader import OfflineReader, ReaderSettings
from mmrag.registry import (ModelChoice, answer_mode, answer_options, answer_stop, build_chat_model, build_reranker,
                            resolve_models)
from mmrag.retrieval import SearchFilter, Searcher, rrf
from mmrag.security import Caller
from mmrag.security.relabel import set_labels
from mmrag.security.rules import AccessRules
from mmrag.types import Chunk, Document, Hit, ImageAsset, Query, Record, TextBlock

__all__ = [
    "ABSTAIN_TEXT", "ANSWER_MODES", "AbstentionGate", "Answer", "Answerer", "Extractor", "Citation", "LiteLLMChatModel", "Message", "answer_mode", "answer_options", "answer_stop", "build_chat_model",
    "EvalConfig", "EvalRun", "JudgeConfig", "check_gates", "compare_runs", "evaluate_dataset", "load_report",
    "parse_gates", "run_evaluation", "write_reports",
    "Chunk", "ChunkSpec", "ChromaStore", "ClipSpec", "OpenClipEmbedder", "SentenceTransformerEmbedder", "open_client", "ConfigError", "Document", "EmbedderMismatchError", "EvalQuery", "Hit", "ImageAsset",
    "Indexer", "IngestSummary", "InvalidInputError", "KnowledgeBase", "LoadError", "MissingDependencyError",
    "MmragError", "ModelChoice", "ModelUnavailableError", "NotFoundError", "OfflineReader", "Query", "ReaderSettings", "Record", "SearchFilter", "Searcher",
    "SentenceChunker", "Settings", "StoreError", "TextBlock", "UpstreamError", "configure_logging", "evaluate_retrieval",
    "load_dataset", "ndcg_at", "offline_minilm_dir", "precision_at", "resolve_models", "rrf",
    "Reranker", "build_reranker",
    "AccessRules", "Caller", "set_labels",
]
__version__ = "0.1.0"
