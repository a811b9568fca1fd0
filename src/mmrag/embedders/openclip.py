"""open_clip backend: one joint text/image space.

Speed choices, each measured in ``eval/bench/ingest.py``:

* inference under ``torch.inference_mode()`` in batches;
* each tower's numerics chosen by timing, not by a CPU flag (``precision="auto"``, see
  :mod:`mmrag.numerics`): fp32, bf16 weights and int8 dynamic quantisation (fp16 on a GPU) are
  timed on a probe, and the fastest whose every probe item agrees with fp32 (cosine >= 0.99) is
  kept. A CPU can have AVX-512 BF16 and still run bf16 three times slower than fp32;
* text batches are cut to their longest sequence: the text tower is causal and pooled at the
  end-of-text token, so the padding past it changes nothing but costs time;
* images are decoded and preprocessed in a thread pool while the model runs on the previous batch.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mmrag.errors import LoadError, MissingDependencyError, ModelUnavailableError
from mmrag.loaders import file_sha256
from mmrag.tracing import span
from mmrag.types import ImageAsset

#: The numerics probe's texts: short prose of several kinds, repeated to CLIP's context length.
_PROBE_LINES = (
    "a photo of a dog running on the beach",
    "a red circle next to a blue square",
    "quarterly revenue grew four percent while costs stayed flat",
    "the building opens at eight and closes at six on weekdays",
    "a diagram of the system's components and how they connect",
    "insulin resistance precedes type 2 diabetes by several years",
    "restart the service after changing the configuration file",
    "two people sitting at a table with laptops and coffee",
)
#: The precisions a model may run in, by name.
_DTYPES: dict[str, Callable[[Any], Any]] = {
    "fp32": lambda torch: torch.float32, "bf16": lambda torch: torch.bfloat16, "fp16": lambda torch: torch.float16,
}
#: Where the offline profile's CLIP model (trained by eval/offline_clip/train.py) lives.
OFFLINE_CLIP_DIR = Path(__file__).resolve().parent.parent / "assets" / "offline_clip"
OFFLINE_CLIP_NAME = "mmrag-easyvqa-tiny"
MAX_IMAGE_PIXELS = 89_478_485


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other names pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _import_torch() -> tuple[Any, Any]:
    try:
        import open_clip
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "open_clip and torch are required for CLIP embeddings: pip install 'mmrag[clip]'"
        ) from exc
    return torch, open_clip


def decode_image(data: bytes, *, label: str, max_pixels: int = MAX_IMAGE_PIXELS, draft: int = 0) -> Any:
    """Decode image bytes to an RGB PIL image, refusing bombs and truncated data.

    Args:
        data: encoded bytes (PNG, JPEG, ...).
        label: what to call the image in errors (a path, or ``file.pdf#page=2,image=1``).
        max_pixels: refuse images with more pixels than this (decompression bombs).
        draft: if > 0, let JPEG decoding shrink the image towards this edge size (much faster).

    Raises:
        LoadError: the bytes are not a decodable image, or the image is too large.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise LoadError(
                label,
                f"image too large ({width}x{height} = {width * height:,} pixels > {max_pixels:,}): "
                "possible decompression bomb",
            )
        if draft and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
        img.load()
        return img.convert("RGB")
    except LoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise LoadError(label, f"not a readable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise LoadError(label, f"truncated or corrupt image ({exc})") from exc


@dataclass(frozen=True)
class ClipSpec:
    """Which open_clip model to load.

    Attributes:
        model: an open_clip architecture name (``ViT-B-32``), or a registered custom config.
        pretrained: an open_clip pretrained tag (downloads when online), a local checkpoint path,
            or ``None``/"" for random weights (benchmarks only).
        config_dir: a folder of extra model-config JSON files to register first.
        precision: ``auto`` (measured per tower: the fastest of fp32, bf16 and int8 that agrees
            with fp32; fp16 on a GPU), or ``bf16``, ``fp16``, ``int8``, ``fp32`` by name.
        device: ``cpu``, ``cuda`` (``cuda:N``), or ``auto`` (cuda when torch sees a GPU).
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    config_dir: str | None = None
    precision: str = "auto"
    batch_size: int = 32
    device: str = "cpu"


class OpenClipEmbedder:
    """Text and image embeddings in one open_clip space, L2-normalised.

    Example:
        >>> emb = OpenClipEmbedder(ClipSpec("ViT-B-32", "laion2b_s34b_b79k"))  # doctest: +SKIP
        >>> emb.embed_texts(["a red circle"]).shape  # doctest: +SKIP
        (1, 512)
    """

    def __init__(self, spec: ClipSpec) -> None:
        torch, open_clip = _import_torch()
        spec = replace(spec, device=resolve_device(spec.device))
        self.spec = spec
        self._torch = torch
        if spec.config_dir:
            open_clip.add_model_config(spec.config_dir)
        pretrained = spec.pretrained or None
        local = pretrained is not None and Path(pretrained).suffix in {".safetensors", ".pt", ".bin", ".pth"}
        if local and not Path(pretrained).is_file():  # type: ignore[arg-type]
            raise ModelUnavailableError(f"CLIP checkpoint not found: {pretrained}")
        self._pretrained = pretrained
        # Random weights (benchmarks): every reload draws them from the generator state of the first.
        self._rng_state = torch.random.get_rng_state() if pretrained is None else None
        # No local name for the model: __init__'s frame lives through the numerics measurement,
        # and a local would keep the first fp32 model alive beside every reload (+600 MB peak).
        self._model = self._load_model()
        self._dtypes: dict[str, Any] = {"image": torch.float32, "text": torch.float32}
        self.numerics: dict[str, Any] = {}  # part -> mmrag.numerics.Choice, once measured
        preprocess = self._preprocess
        self._tokenizer = open_clip.get_tokenizer(spec.model)
        self._plain_causal_text = _is_plain_causal_text(self._model, torch)
        self._plain_vit = _is_plain_vit(getattr(self._model, "visual", None), torch)
        self.image_size = _image_size(preprocess)
        self.weights_id = file_sha256(Path(pretrained))[:16] if local else (pretrained or "random")
        with torch.inference_mode():
            probe = self._encode_text_tokens(self._tokenizer(["probe"]))
        self.dim = int(probe.shape[-1])
        self.agreement = 1.0  # the probe's cosine against fp32 (1.0: fp32 itself)
        self.precision = self._choose_precision(spec.precision)
        self.name = f"open_clip:{spec.model}:{self.weights_id}"

    # -- identity -----------------------------------------------------------------------------
    def identity(self) -> dict[str, str | int]:
        """What must match for two runs to share a collection (stored with it)."""
        return {
            "embedder": "open_clip",
            "model": self.spec.model,
            "weights": self.weights_id,
            "dim": self.dim,
            "preprocess": f"size={self.image_size}",
            "precision": self.precision,
        }

    # -- precision ----------------------------------------------------------------------------
    def _choose_precision(self, wanted: str) -> str:
        """Each tower's numerics by measurement (:mod:`mmrag.numerics`): image first, then text.

        The towers are timed apart because they differ: the image tower is a ViT on 224x224 pixels,
        the text tower a causal transformer on at most 77 tokens. Returns ``image=X,text=Y``, or the
        one name when both agree. An explicit precision is checked against fp32 and refused if a
        tower disagrees.
        """
        from mmrag import numerics

        try:
            candidates = numerics.candidates_for(wanted, "cpu" if self.spec.device == "cpu" else "gpu")
        except ValueError as exc:
            raise ModelUnavailableError(str(exc)) from None
        if not candidates:
            return "fp32"
        torch = self._torch
        gen = torch.Generator().manual_seed(0)
        pixels = torch.rand(4, 3, self.image_size, self.image_size, generator=gen)
        texts = [f"{line} {line} {line}" for line in _PROBE_LINES]
        key = {"model": self.spec.model, "weights": self.weights_id, "device": self.spec.device,
               "batch": self.spec.batch_size}
        self.numerics = {}
        for part in ("image", "text"):
            probe = (lambda: self.embed_pixels(pixels)) if part == "image" else (lambda: self._embed_texts(texts))
            self.numerics[part] = numerics.choose(
                candidates, probe=probe, convert=lambda name, part=part: self._convert(part, name),
                restore=lambda part=part: self._restore(part), what=f"CLIP {self.spec.model} {part} tower",
                key={**key, "part": part}, keep=None if wanted == "auto" else wanted)
        if wanted != "auto":
            bad = [f"{part}: {c.describe()}" for part, c in self.numerics.items() if c.name != wanted]
            if bad:
                raise ModelUnavailableError(f"{wanted} disagrees with fp32 on this machine ({'; '.join(bad)}); "
                                            "use fp32 or auto")
        self.agreement = min(c.agreement for c in self.numerics.values())
        image, text = self.numerics["image"].name, self.numerics["text"].name
        return image if image == text else f"image={image},text={text}"

    def _convert(self, part: str, name: str) -> None:
        """Convert one tower in place to ``name`` (bf16/fp16 weights, or int8 dynamic Linear layers)."""
        torch = self._torch
        from mmrag.numerics import is_int8, quantize_linear_int8

        if is_int8(name) and self.spec.device != "cpu":
            raise ValueError("int8 dynamic quantisation runs on the CPU only")
        modules, params = _tower(self._model, part)
        if is_int8(name):
            for module in modules:
                if (part == "text" and self._plain_causal_text) or (part == "image" and self._plain_vit):
                    # The text tower's modules include its transformer; the image tower is one module.
                    _attention_as_linears(module if part == "text" else module.transformer, torch)
                quantize_linear_int8(module, name)
            dtype = torch.float32
        else:
            dtype = _DTYPES[name](torch)
            for module in modules:
                module.to(dtype)
            for param in params:
                param.data = param.data.to(dtype)
        self._dtypes[part] = dtype

    def _restore(self, part: str) -> None:
        """Back to fp32 weights for ``part``: reload the model, then re-apply the other tower's choice.

        The converted model is let go, and its pages handed back to the OS, before the fp32 one
        loads, so two never coexist (peak RSS).
        """
        from mmrag.numerics import release_freed_memory

        self._model = None
        release_freed_memory()
        self._model = self._load_model()
        self._dtypes = {"image": self._torch.float32, "text": self._torch.float32}
        other = "text" if part == "image" else "image"
        chosen = getattr(self, "numerics", {}).get(other)
        if chosen is not None and chosen.name != "fp32":
            self._convert(other, chosen.name)

    def _load_model(self) -> Any:
        """The fp32 model from its weights (random weights from the first load's generator state)."""
        _, open_clip = _import_torch()
        torch = self._torch
        with torch.random.fork_rng(devices=[]):
            if self._rng_state is not None:
                torch.random.set_rng_state(self._rng_state)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.spec.model, pretrained=self._pretrained, device=self.spec.device)
            except Exception as exc:  # noqa: BLE001 - hub, network and checkpoint errors come in many types
                raise ModelUnavailableError(_unavailable_message(self.spec, exc)) from exc
        self._preprocess = preprocess
        return model.eval()

    @property
    def _dtype(self) -> Any:
        return self._dtypes["image"]

    # -- text ---------------------------------------------------------------------------------
    def _encode_text_tokens(self, tokens: Any) -> Any:
        """encode_text, but cut to the batch's longest sequence (see module docstring)."""
        model = self._model
        torch = self._torch
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
        if not all(getattr(model, name, None) is not None for name in needed) or getattr(model, "text_pool_type", "argmax") != "argmax":
            return model.encode_text(tokens)
        from open_clip.transformer import text_global_pool

        # argmax pooling means open_clip's SimpleTokenizer convention: pad id 0, EOT the largest id.
        length = int((tokens != 0).sum(dim=1).max())
        tokens = tokens[:, :length]
        cast = self._dtypes["text"]
        x = model.token_embedding(tokens).to(cast)
        x = x + model.positional_embedding[:length].to(cast)
        if self._plain_causal_text:
            # Pooled at the end-of-text token: the last block computes that row alone.
            eot = tokens.argmax(dim=-1)
            blocks = model.transformer.resblocks
            for n, block in enumerate(blocks):
                x = _plain_block(block, x, causal=True, rows=eot if n == len(blocks) - 1 else None)
            x = model.ln_final(x)[:, 0]
        else:
            x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
            x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type)
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        return x

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (each cut at CLIP's 77 tokens). Returns float32 [n, dim], unit rows."""
        with span("embed", embedder=self.name, modality="text", items=len(texts)):
            return self._embed_texts(texts)

    def _embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps short texts together, so trimming to the longest pays off.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        bs = self.spec.batch_size
        with torch.inference_mode():
            for lo in range(0, len(order), bs):
                idx = order[lo : lo + bs]
                tokens = self._tokenizer([texts[i] for i in idx]).to(self.spec.device)
                feats = torch.nn.functional.normalize(self._encode_text_tokens(tokens).float(), dim=-1)
                out[idx] = feats.cpu().numpy()
        return out

    # -- images -------------------------------------------------------------------------------
    def preprocess(self, asset: ImageAsset, label: str = "image") -> Any:
        """Decode and transform one image to a model-ready tensor. Raises LoadError."""
        img = decode_image(asset.read_bytes(), label=label, draft=self.image_size * 2)
        return self._preprocess(img)

    def _encode_pixels(self, pixels: Any) -> Any:
        """encode_image, with the attention projections as plain layers and a last block for the class token only.

        open_clip's ViT pools its class token, so the last block needs every token's keys and values
        but only that token's query, attention output and MLP: the same numbers for a twelfth less
        work (ViT-B-32). Any other vision tower runs open_clip's own ``encode_image``.
        """
        visual, torch = self._model.visual, self._torch
        if not self._plain_vit:
            return self._model.encode_image(pixels)
        x = visual._embeds(pixels)
        blocks = visual.transformer.resblocks
        class_token_only = visual.attn_pool is None and visual.pool_type == "tok" and not visual.final_ln_after_pool
        first = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the class token's row
        for n, block in enumerate(blocks):
            x = _plain_block(block, x, causal=False, rows=first if class_token_only and n == len(blocks) - 1 else None)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def embed_pixels(self, batch: Any) -> np.ndarray:
        """Embed a preprocessed [n, 3, H, W] batch."""
        torch = self._torch
        with torch.inference_mode():
            feats = self._encode_pixels(batch.to(self.spec.device, self._dtype))
            # Normalise in fp32: a bf16 norm is off by up to ~0.5%.
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def iter_image_embeddings(
        self, assets: Sequence[ImageAsset], labels: Sequence[str] | None = None
    ) -> Iterator[tuple[int, np.ndarray | LoadError]]:
        """Yield ``(i, vector or LoadError)`` for every asset; decoding overlaps with the model.

        Decode/preprocess runs in a thread pool one batch ahead of the model (PIL and the
        torchvision resize release the GIL), so image I/O hides behind inference.
        """
        torch = self._torch
        labels = list(labels) if labels is not None else [a.path or f"image#{i}" for i, a in enumerate(assets)]
        bs = self.spec.batch_size

        def prep(i: int) -> Any:
            try:
                return self.preprocess(assets[i], labels[i])
            except LoadError as exc:
                return exc
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's failure
                return LoadError(labels[i], f"could not decode image ({type(exc).__name__}: {exc})")

        workers = max(1, min(4, (os.cpu_count() or 2)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmrag-img") as pool:
            batches = [list(range(lo, min(lo + bs, len(assets)))) for lo in range(0, len(assets), bs)]
            pending: list[list[Future[Any]]] = []
            for b in batches[:2]:
                pending.append([pool.submit(prep, i) for i in b])
            for n, b in enumerate(batches):
                results = [f.result() for f in pending.pop(0)]
                if n + 2 < len(batches):
                    pending.append([pool.submit(prep, i) for i in batches[n + 2]])
                good = [(i, t) for i, t in zip(b, results) if not isinstance(t, LoadError)]
                for i, t in zip(b, results):
                    if isinstance(t, LoadError):
                        yield i, t
                if good:
                    vecs = self.embed_pixels(torch.stack([t for _, t in good]))
                    for (i, _), v in zip(good, vecs):
                        yield i, v

    def embed_images(self, assets: Sequence[ImageAsset]) -> np.ndarray:
        """Embed images. Returns float32 [n, dim]. Raises LoadError for the first bad image."""
        out = np.zeros((len(assets), self.dim), dtype=np.float32)
        with span("embed", embedder=self.name, modality="image", items=len(assets)):
            for i, vec in self.iter_image_embeddings(assets):
                if isinstance(vec, LoadError):
                    raise vec
                out[i] = vec
        return out


def _is_plain_causal_text(model: Any, torch: Any) -> bool:
    """True if the text tower is open_clip's stock causal transformer, so :func:`_plain_block` is exact."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    mask = getattr(model, "attn_mask", None)
    if not blocks or mask is None or not getattr(model.transformer, "batch_first", False):
        return False
    causal = torch.equal(torch.isneginf(mask), torch.ones(mask.shape, dtype=torch.bool).triu(1))
    return causal and all(
        type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
        and isinstance(b.attn, torch.nn.MultiheadAttention) and b.attn._qkv_same_embed_dim
        for b in blocks
    )


def _is_plain_vit(visual: Any, torch: Any) -> bool:
    """True if ``visual`` is open_clip's stock ViT (batch-first blocks), so :func:`_plain_block` is exact."""
    from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer

    transformer = getattr(visual, "transformer", None)
    if type(visual) is not VisionTransformer or type(transformer) is not Transformer:
        return False
    if not transformer.batch_first or visual.output_tokens or not hasattr(visual, "_embeds") or not hasattr(visual, "_pool"):
        return False
    return all(
        type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
        and isinstance(b.attn, torch.nn.MultiheadAttention) and b.attn._qkv_same_embed_dim
        for b in transformer.resblocks
    )


def _plain_block(block: Any, x: Any, *, causal: bool, rows: Any = None) -> Any:
    """``block(x)`` (``attn_mask=causal`` for the text tower) for [batch, length, width] input, without its slow path.

    nn.MultiheadAttention leaves its fast path for any float mask, transposes the input to
    [length, batch, width] and runs the in-projection on that non-contiguous view, which torch
    turns into a bmm against a per-position copy of the weight: 30x slower than a plain matmul
    in bf16 on CPU (measured). Same weights and maths; SDPA's is_causal replaces the -inf mask.
    The projections are the block's ``mmrag_qkv``/``mmrag_out`` layers when
    :func:`_attention_as_linears` gave it them (int8), else the attention's own weights.
    ``rows`` (a [batch] index tensor) returns one token's row per item, ``[batch, 1, width]``: the
    keys and values of every token, one query (a last block whose output is pooled at that token).
    """
    import torch
    import torch.nn.functional as F

    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv_proj, out_proj = getattr(block, "mmrag_qkv", None), getattr(block, "mmrag_out", None)
    h = block.ln_1(x)
    qkv = qkv_proj(h) if qkv_proj is not None else F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    mask = None
    if rows is not None:
        pick = torch.arange(batch, device=x.device)
        q, x = q[pick, :, rows].unsqueeze(2), x[pick, rows].unsqueeze(1)
        if causal:  # the query sees the keys up to its own position (is_causal would align it to key 0)
            mask = (torch.arange(length, device=x.device) <= rows[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and rows is None)
    out = out.transpose(1, 2).reshape(batch, q.shape[2], width)
    out = out_proj(out) if out_proj is not None else F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _tower(model: Any, part: str) -> tuple[list[Any], list[Any]]:
    """The modules and the loose parameters of one tower: ``visual``, or everything else but the logit scale."""
    if part == "image":
        return [model.visual], []
    modules = [m for name, m in model.named_children() if name != "visual"]
    params = [p for name, p in model.named_parameters(recurse=False) if not name.startswith("logit_")]
    return modules, params


def _attention_as_linears(transformer: Any, torch: Any) -> None:
    """Give each block its attention projections as ``nn.Linear`` layers (for int8).

    nn.MultiheadAttention keeps its in-projection as a bare parameter and its out-projection as a
    Linear subclass that dynamic quantisation skips; :func:`_plain_block` uses these instead, so
    the attention projections are quantised with the MLPs. The attention's own copies are emptied:
    kept, the fp32 weights would stay resident beside their int8 layers (113 MB for ViT-B-32's
    image tower), and nothing reads them once the block has its layers.
    """
    for block in getattr(transformer, "resblocks", ()):
        attn = block.attn
        width = attn.embed_dim
        qkv = torch.nn.Linear(width, 3 * width, bias=attn.in_proj_bias is not None)
        qkv.weight.data = attn.in_proj_weight.data
        if attn.in_proj_bias is not None:
            qkv.bias.data = attn.in_proj_bias.data
        out = torch.nn.Linear(width, width, bias=attn.out_proj.bias is not None)
        out.weight.data = attn.out_proj.weight.data
        if attn.out_proj.bias is not None:
            out.bias.data = attn.out_proj.bias.data
        block.mmrag_qkv, block.mmrag_out = qkv, out
        for param in (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias):
            if param is not None:
                param.data = torch.empty(0, dtype=param.dtype)


def _image_size(preprocess: Callable[..., Any]) -> int:
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(size[0])
    return 224


def _unavailable_message(spec: ClipSpec, exc: BaseException) -> str:
    return (
        f"Could not load CLIP model {spec.model!r} with weights {spec.pretrained!r} "
        f"({type(exc).__name__}: {exc}). If this machine is offline, use the offline profile "
        "(--profile offline or MMRAG_PROFILE=offline), or point --clip-pretrained at a local checkpoint."
    )
