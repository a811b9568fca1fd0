"""sentence-transformers ``CrossEncoder`` backend: a model that reads the query and the passage together.

Why each choice:

* A hub name (``cross-encoder/ms-marco-MiniLM-L6-v2``, ``BAAI/bge-reranker-base``) downloads once
  and needs a network; a local folder (one ``CrossEncoder.save`` wrote, or a hub snapshot) loads with
  ``local_files_only``, so an offline machine never tries the hub for it.
* Only single-output models are accepted: a reranker needs one relevance score per pair, and a
  3-way NLI model's logits are not one.
* Scores are the model's own activation (a sigmoid for single-output models), monotone in the logit:
  reranking only needs the order.
* ``precision="auto"`` times fp32 and the candidates (bf16 and int8 on a CPU, fp16 on a GPU) on
  fixed pairs at load and keeps the fastest whose features agree with fp32 (:mod:`mmrag.numerics`,
  remembered per machine): a CPU flag says bf16 exists, not that it is fast (with oneDNN capped at
  AVX2 it is slower than fp32). ``fp32`` is always available; an explicit ``bf16``/``fp16``/``int8``
  is still checked against fp32.
* One lock around ``predict``: the server shares one model across request threads, and a fast
  tokenizer used by two threads at once fails ("Already borrowed").
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from mmrag.errors import ConfigError, MissingDependencyError, ModelUnavailableError
from mmrag.numerics import KNOWN
from mmrag.tracing import span

#: What ``precision`` may name: every numerics name (:data:`mmrag.numerics.KNOWN`).
PRECISIONS = KNOWN

#: (query, passage) pairs the numerics are measured on: about a rerank batch, at chunk length.
_PROBE_PAIRS = 20


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
        precision: ``auto``, ``bf16``, ``fp16``, ``int8`` or ``fp32`` (see the module docstring).

    Raises:
        MissingDependencyError: sentence-transformers is not installed.
        ModelUnavailableError: the folder does not exist or the model cannot be loaded.
        ConfigError: the model gives more than one score per pair, the precision is unknown, or an
            explicit precision disagrees with fp32 on this machine.

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
        from mmrag.embedders.openclip import resolve_device

        def load() -> Any:
            try:
                return CrossEncoder(ref, device=resolve_device(device), max_length=max_length, local_files_only=local)
            except Exception as exc:  # noqa: BLE001 - hub, network and file errors come in many types
                hint = ("check that the folder holds a cross-encoder" if local else
                        "if this machine is offline, download it elsewhere and pass its local folder")
                raise ModelUnavailableError(f"Could not load cross-encoder {model!r} ({type(exc).__name__}: "
                                            f"{exc}); {hint}.") from exc

        self._load = load
        self._model: Any = load()
        labels = int(self._model.num_labels)
        if labels != 1:
            raise ConfigError(f"Cross-encoder {model!r} gives {labels} scores per pair; a reranker needs a model "
                              "with one relevance output (e.g. cross-encoder/ms-marco-MiniLM-L6-v2)")
        self.model_ref = ref
        self.name = f"cross-encoder:{ref}"
        self.batch_size = int(batch_size)
        self.max_length = int(self._model.max_length)
        self._lock = threading.Lock()
        self.numerics: Any = None  # the measurement behind ``auto`` (a :class:`mmrag.numerics.Choice`)
        self.precision = self._set_precision(precision)

    def _set_precision(self, wanted: str) -> str:
        from mmrag import numerics

        candidates = numerics.candidates_for(wanted, self._model.device.type)
        if not candidates:
            return "fp32"
        self.numerics = numerics.choose(
            candidates, probe=self._probe, convert=self._convert, restore=self._reload,
            what=f"cross-encoder {self.model_ref}", keep=None if wanted == "auto" else wanted,
            key={"model": self.model_ref, "device": str(self._model.device), "batch": self.batch_size,
                 "max_length": self.max_length})
        if wanted != "auto" and self.numerics.name != wanted:
            raise ConfigError(f"Cross-encoder {self.model_ref!r} in {wanted} disagrees with fp32 on this machine "
                              f"({self.numerics.describe()}); use fp32 or auto")
        return str(self.numerics.name)

    def _probe(self) -> Any:
        """The last layer's first-token vectors of fixed pairs: what the classification head reads."""
        import torch

        from mmrag.numerics import probe_pairs

        tokenizer, net = self._model.tokenizer, self._model.model
        batch = tokenizer(*probe_pairs(_PROBE_PAIRS, 200), padding=True, truncation="only_second", max_length=self.max_length,
                          return_tensors="pt").to(self._model.device)
        with torch.inference_mode():
            hidden = net(**batch, output_hidden_states=True).hidden_states[-1][:, 0]
        return hidden.float().cpu().numpy()

    def _convert(self, name: str) -> None:
        import torch

        from mmrag.numerics import is_int8, quantize_linear_int8

        if is_int8(name):
            if self._model.device.type != "cpu":
                raise ValueError("int8 dynamic quantisation runs on the CPU only")
            quantize_linear_int8(self._model.model, name)
        else:
            self._model.to(torch.bfloat16 if name == "bf16" else torch.float16)

    def _reload(self) -> None:
        # A cast rounds the weights in place and quantisation swaps the layers: fp32 comes back from disk.
        from mmrag.numerics import release_freed_memory

        self._model = None
        release_freed_memory()  # the converted model's pages, before the fp32 one loads (as the embedders do)
        self._model = self._load()

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
