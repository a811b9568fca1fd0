"""sentence-transformers ``CrossEncoder`` backend: a model that reads the query and the passage together.

Why each choice:

* A hub name (``cross-encoder/ms-marco-MiniLM-L6-v2``, ``BAAI/bge-reranker-base``) downloads once
  and needs a network; a local folder (one ``CrossEncoder.save`` wrote, or a hub snapshot) loads with
  ``local_files_only``, so an offline machine never tries the hub for it.
* Only single-output models are accepted: a reranker needs one relevance score per pair, and a
  3-way NLI model's logits are not one.
* Scores are the model's own activation (a sigmoid for single-output models), monotone in the logit:
  reranking only needs the order.
* ``precision="auto"`` runs bf16 where the CPU has AVX-512 BF16 (about 2x faster for MiniLM-L6 on
  30 pairs, issue 25's measurement) and fp16 on a GPU; ``fp32`` is always available.
* One lock around ``predict``: the server shares one model across request threads, and a fast
  tokenizer used by two threads at once fails ("Already borrowed").
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from mmrag.errors import ConfigError, MissingDependencyError, ModelUnavailableError
from mmrag.tracing import span

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def is_local_ref(model: str) -> bool:
    """True when ``model`` names a folder (an existing one, or one written as a path) rather than a hub model."""
    return Path(model).expanduser().is_dir() or model.startswith(("/", "./", "../", "~"))


class CrossEncoderReranker:
    """A :class:`~mmrag.protocols.Reranker` over a sentence-transformers ``CrossEncoder``.

    Args:
        model: a hub name (needs a network on first use) or a local folder.
        device: ``cpu``, ``cuda`` or ``auto``.
        max_length: tokens read per (query, passage) pair; None: the model's own limit.
        batch_size: pairs per forward pass.
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (see the module docstring).

    Raises:
        MissingDependencyError: sentence-transformers is not installed.
        ModelUnavailableError: the folder does not exist or the model cannot be loaded.
        ConfigError: the model gives more than one score per pair, or the precision is unknown.

    Example:
        >>> reranker = CrossEncoderReranker("/models/ms-marco-MiniLM-L6-v2")  # doctest: +SKIP
        >>> reranker.score("who wrote Hamlet?", ["Shakespeare wrote Hamlet.", "Paris is in France."])  # doctest: +SKIP
        [0.998, 0.0001]
    """

    def __init__(self, model: str, *, device: str = "cpu", max_length: int | None = None, batch_size: int = 32,
                 precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"Unknown reranker precision {precision!r}. Known: {', '.join(PRECISIONS)}")
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("A cross-encoder reranker needs sentence-transformers: "
                                         "pip install 'mmrag[text]'") from exc
        local = is_local_ref(model)
        ref = str(Path(model).expanduser()) if local else model
        if local and not Path(ref).is_dir():
            raise ModelUnavailableError(f"No cross-encoder folder at {ref!r}: pass a folder that CrossEncoder.save() "
                                        "wrote (or a hub snapshot), or a hub name such as "
                                        "cross-encoder/ms-marco-MiniLM-L6-v2")
        _quiet_transformers()
        try:
            from mmrag.embedders.openclip import resolve_device

            self._model: Any = CrossEncoder(ref, device=resolve_device(device), max_length=max_length,
                                            local_files_only=local)
        except Exception as exc:  # noqa: BLE001 - hub, network and file errors come in many types
            hint = ("check that the folder holds a cross-encoder" if local else
                    "if this machine is offline, download it elsewhere and pass its local folder")
            raise ModelUnavailableError(f"Could not load cross-encoder {model!r} ({type(exc).__name__}: {exc}); "
                                        f"{hint}.") from exc
        labels = int(self._model.num_labels)
        if labels != 1:
            raise ConfigError(f"Cross-encoder {model!r} gives {labels} scores per pair; a reranker needs a model "
                              "with one relevance output (e.g. cross-encoder/ms-marco-MiniLM-L6-v2)")
        self.model_ref = ref
        self.name = f"cross-encoder:{ref}"
        self.batch_size = int(batch_size)
        self.max_length = int(self._model.max_length)
        self._lock = threading.Lock()
        self.precision = self._set_precision(precision)

    def _set_precision(self, wanted: str) -> str:
        import torch

        on_cpu = self._model.device.type == "cpu"
        if wanted == "auto":
            wanted = "fp16" if not on_cpu else ("bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32")
        if wanted != "fp32":
            self._model.to(torch.bfloat16 if wanted == "bf16" else torch.float16)
        return wanted

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage, in order (higher is more relevant)."""
        if not passages:
            return []
        pairs = [(query, p) for p in passages]
        with self._lock, span("rerank.model", reranker=self.name, pairs=len(pairs)):
            scores = self._model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False,
                                         convert_to_numpy=True)
        return [float(s) for s in scores]


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        # transformers draws a "Loading weights" bar on stderr; the CLI owns the terminal.
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        pass
