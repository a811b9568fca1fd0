#!/usr/bin/env python
"""Train mmrag's "offline profile" CLIP model on the easy-vqa TRAIN split.

mmrag must run on machines that cannot download model weights, and no package
on the registries ships CLIP weights.  This script trains a deliberately tiny
CLIP-style model (open_clip's own ``CLIP`` class, built from the custom config
``src/mmrag/assets/offline_clip/mmrag-easyvqa-tiny.json``) from scratch on the
4,000 train images of the ``easy_vqa`` PyPI package (64x64 images of one
coloured shape each; MIT licence).  The test split is never read here; it is
only used by ``eval/offline_clip/evaluate.py`` for evaluation.

Labels (``eval.datasets.easyvqa.load_split``).  easy-vqa gives question/answer pairs, not captions.  Each image's
colour and shape are derived from its Q/A pairs ("what color is the shape?" ->
"red", "is there not a circle?" -> "no", ...), by intersecting the candidate
sets implied by every question.  For the ~10% of images whose questions leave
the answer open (e.g. only "is there a blue shape?" -> "no"), the label is
read from the pixels: the shape is drawn in one exact palette colour, and the
row-width profile of that mask tells rectangle / triangle / circle apart.  The
pixel reading is cross-checked against every Q/A-determined label (it agrees on
all of them; the script aborts if it ever disagrees).

Captions.  Each training step draws, per image, one caption from templates
such as "a red circle", "red circle", "a photo of a red circle", "a circle
that is red"; with a small probability a partial caption ("a red shape",
"a circle") is used instead, so single-attribute queries also work.

Loss.  Captions repeat across a batch (there are only 24 colour/shape
combinations), so plain CLIP InfoNCE would punish the model for matching an
image with a correct caption of another image.  The loss is therefore the
symmetric InfoNCE of open_clip's ``ClipLoss`` with multi-positive targets:
caption j is a positive for image i whenever it is true of image i (the target
distribution is uniform over the positives), in both directions.

Determinism.  Python/numpy/torch seeds are fixed (``--seed``, default 0),
``torch.use_deterministic_algorithms(True)`` is on, the thread count is fixed
(``--threads``, default 2), data order and augmentation come from a seeded
``torch.Generator``.  Same seed + same threads + same torch build -> same
weights.

Output.  ``<out>/mmrag-easyvqa-tiny.safetensors`` (fp16 state_dict, the format
open_clip's ``load_checkpoint`` reads) and a copy of the config json, so that::

    open_clip.add_model_config("<out>/mmrag-easyvqa-tiny.json")
    model, _, preprocess = open_clip.create_model_and_transforms(
        "mmrag-easyvqa-tiny", pretrained="<out>/mmrag-easyvqa-tiny.safetensors")
    tokenizer = open_clip.get_tokenizer("mmrag-easyvqa-tiny")  # SimpleTokenizer

works with no network.  Preprocessing is open_clip's default for the config:
resize/centre-crop to 64, OpenAI CLIP mean/std (a model config registered with
add_model_config cannot carry its own preprocess_cfg in open_clip 3.3.0), and
training uses exactly that transform.

Usage (CPU only; about 9 minutes on 2 idle cores, 12-13 s per epoch)::

    python -m eval.offline_clip.train --out src/mmrag/assets/offline_clip
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

MODEL_NAME = "mmrag-easyvqa-tiny"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "src" / "mmrag" / "assets" / "offline_clip" / f"{MODEL_NAME}.json"

from eval.datasets.easyvqa import COLORS, SHAPES, load_split  # noqa: E402 - labels live with the dataset

FULL_TEMPLATES = (
    "a {c} {s}",
    "{c} {s}",
    "a photo of a {c} {s}",
    "an image of a {c} {s}",
    "a picture of a {c} {s}",
    "a {c} {s} on a plain background",
    "a {s} that is {c}",
    "a {c} colored {s}",
    "the {c} {s}",
    "a drawing of a {c} {s}",
)
COLOR_TEMPLATES = ("a {c} shape", "something {c}", "a photo of a {c} shape")
SHAPE_TEMPLATES = ("a {s}", "a photo of a {s}", "a {s} shape")


# --------------------------------------------------------------------------- model helpers
def register_config(config_path: Path) -> None:
    import open_clip

    open_clip.add_model_config(str(config_path))
    if MODEL_NAME not in open_clip.list_models():
        raise RuntimeError(f"config {config_path} did not register {MODEL_NAME}")


def encode_images(model, preprocess, paths: Sequence[str], batch_size: int = 256):
    """L2-normalised image embeddings (float32, eval mode, no grad)."""
    import torch
    from PIL import Image

    feats = []
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]])
            feats.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(feats)


def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256):
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(list(texts[i:i + batch_size]))
            feats.append(torch.nn.functional.normalize(model.encode_text(tok).float(), dim=-1))
    return torch.cat(feats)


# --------------------------------------------------------------------------- training
def seed_everything(seed: int, threads: int) -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def build_caption_bank():
    """All captions with the (colour or None, shape or None) they assert."""
    bank: List[Tuple[str, str | None, str | None, str]] = []  # (text, colour, shape, kind)
    for c in COLORS:
        for s in SHAPES:
            for t in FULL_TEMPLATES:
                bank.append((t.format(c=c, s=s), c, s, "full"))
    for c in COLORS:
        for t in COLOR_TEMPLATES:
            bank.append((t.format(c=c), c, None, "color"))
    for s in SHAPES:
        for t in SHAPE_TEMPLATES:
            bank.append((t.format(s=s), None, s, "shape"))
    return bank


def augment(x, gen, max_shift: int):
    """Light, label-preserving augmentation on a normalised batch [B,3,H,W].

    Horizontal flip (a flipped upright triangle is still an upright triangle) and a
    small translation, padding with the image's own background colour so
    no shape pixels are smeared or wrapped around.
    """
    import torch

    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift > 0:
        # background colour: per-channel median of the border pixels (mostly background)
        border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=-1)
        bg = border.median(dim=-1).values[:, :, None, None]
        canvas = bg.expand(b, 3, h + 2 * max_shift, w + 2 * max_shift).clone()
        canvas[:, :, max_shift:max_shift + h, max_shift:max_shift + w] = x
        dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
        x = torch.stack([canvas[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return x


def multi_positive_clip_loss(image_features, text_features, logit_scale, pos):
    """Symmetric InfoNCE (as open_clip.ClipLoss) with a boolean positives matrix pos[i, j]."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_features @ text_features.t()
    pos = pos.float()
    t_i2t = pos / pos.sum(1, keepdim=True)
    t_t2i = (pos / pos.sum(0, keepdim=True)).t()
    loss_i = -(t_i2t * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(t_t2i * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def train(args) -> Path:
    seed_everything(args.seed, args.threads)
    import torch
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file

    t0 = time.time()
    config_path = Path(args.config).resolve()
    register_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)  # random init, seeded
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {MODEL_NAME}: {n_params / 1e6:.2f}M params; preprocess: {preprocess}", flush=True)

    data = load_split("train")
    color_idx = torch.tensor([COLORS.index(c) for _, c, _ in data])
    shape_idx = torch.tensor([SHAPES.index(s) for _, _, s in data])
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _, _ in data])
    print(f"train split: {len(data)} images, {len(set(zip(color_idx.tolist(), shape_idx.tolist())))} "
          f"colour/shape classes ({time.time() - t0:.1f}s)", flush=True)

    bank = build_caption_bank()
    bank_tokens = tokenizer([b[0] for b in bank])
    # trim the all-padding tail: the text tower is causal and pooled at the EOT token, so
    # columns after the longest caption never influence the output (saves ~90% of text compute)
    max_len = int((bank_tokens != 0).sum(1).max())
    bank_color = torch.tensor([COLORS.index(b[1]) if b[1] else -1 for b in bank])
    bank_shape = torch.tensor([SHAPES.index(b[2]) if b[2] else -1 for b in bank])
    full_ids = {(c, s): [k for k, b in enumerate(bank) if b[3] == "full" and b[1] == COLORS[c] and b[2] == SHAPES[s]]
                for c in range(len(COLORS)) for s in range(len(SHAPES))}
    color_ids = {c: [k for k, b in enumerate(bank) if b[3] == "color" and b[1] == COLORS[c]] for c in range(len(COLORS))}
    shape_ids = {s: [k for k, b in enumerate(bank) if b[3] == "shape" and b[2] == SHAPES[s]] for s in range(len(SHAPES))}

    gen = torch.Generator().manual_seed(args.seed)
    n = len(data)
    steps_per_epoch = n // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = min(args.warmup, total // 10)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))

    def text_forward(tok):
        # encode_text on the trimmed tokens: same computation as the full 77-token pass
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tok).to(cast) + model.positional_embedding[:tok.shape[1]].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:tok.shape[1], :tok.shape[1]])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), tok.argmax(dim=-1)]
        return x @ model.text_projection

    # sanity: the trimmed text path equals open_clip's encode_text
    with torch.no_grad():
        model.eval()
        ref = model.encode_text(bank_tokens[:8])
        got = text_forward(bank_tokens[:8, :max_len])
        assert torch.allclose(ref, got, atol=1e-5), (ref - got).abs().max()

    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        run_loss, t_ep = 0.0, time.time()
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            x = augment(images[idx], gen, args.max_shift)
            ci, si = color_idx[idx], shape_idx[idx]
            # one caption per image: mostly full "colour shape" captions, sometimes partial
            r = torch.rand(len(idx), generator=gen)
            cap = []
            for k in range(len(idx)):
                c, s = int(ci[k]), int(si[k])
                pool = (full_ids[(c, s)] if r[k] >= args.partial_prob
                        else color_ids[c] if r[k] < args.partial_prob / 2 else shape_ids[s])
                cap.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
            cap = torch.tensor(cap)
            # positives: caption j is true of image i
            bc, bs = bank_color[cap], bank_shape[cap]
            pos = ((bc[None, :] == -1) | (bc[None, :] == ci[:, None])) & \
                  ((bs[None, :] == -1) | (bs[None, :] == si[:, None]))
            img_f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            txt_f = torch.nn.functional.normalize(text_forward(bank_tokens[cap, :max_len]), dim=-1)
            loss = multi_positive_clip_loss(img_f, txt_f, model.logit_scale.exp(), pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            run_loss += loss.item()
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs} loss {run_loss / steps_per_epoch:.4f} "
              f"logit_scale {model.logit_scale.exp().item():.1f} lr {sched.get_last_lr()[0]:.2e} "
              f"({time.time() - t_ep:.1f}s, total {time.time() - t0:.0f}s)", flush=True)

    # quick train-split check (the real evaluation is eval/offline_clip/evaluate.py on the test split)
    model.eval()
    with torch.no_grad():
        feats = []
        for i in range(0, n, 500):
            feats.append(torch.nn.functional.normalize(model.encode_image(images[i:i + 500]), dim=-1))
        feats = torch.cat(feats)
        prompts = [f"a {COLORS[c]} {SHAPES[s]}" for c in range(len(COLORS)) for s in range(len(SHAPES))]
        tf = encode_texts(model, tokenizer, prompts)
        pred = (feats @ tf.t()).argmax(1)
        acc = (pred == color_idx * len(SHAPES) + shape_idx).float().mean().item()
    print(f"train-split zero-shot accuracy over the 24 prompts: {acc:.4f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{MODEL_NAME}.safetensors"
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    # metadata holds one key only: safetensors writes a metadata map in random key order,
    # so more keys would make the file bytes (not the tensors) differ between identical runs
    save_file(sd, str(weights), metadata={"format": "pt"})
    os.chmod(weights, 0o644)
    cfg_out = out / config_path.name
    if not cfg_out.exists() or not cfg_out.samefile(config_path):
        shutil.copyfile(config_path, cfg_out)
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {cfg_out}; "
          f"wall time {time.time() - t0:.0f}s", flush=True)
    return weights


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory for the weights (and a copy of the config)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="open_clip model config json")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay")
    p.add_argument("--max-shift", type=int, default=4, help="max translation (pixels) in augmentation; 0 disables")
    p.add_argument("--partial-prob", type=float, default=0.15,
                   help="probability of a colour-only or shape-only caption instead of a full one")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (fixed for reproducibility)")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
