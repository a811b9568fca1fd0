#!/usr/bin/env python
"""Evaluate mmrag's offline CLIP model on the easy-vqa TEST split (evaluation only).

Loads the model exactly as mmrag does (no network)::

    open_clip.add_model_config(<config json>)
    open_clip.create_model_and_transforms("mmrag-easyvqa-tiny", pretrained=<weights>.safetensors)

and reports, with cosine similarity of L2-normalised embeddings:

(a) text->image precision@5 over the 24 queries "a {color} {shape}" (relevant =
    test images of that colour and shape), averaged over the queries;
(b) image->image precision@5: each test image as the query, itself excluded,
    share of the top 5 with the same colour and shape, averaged over images.

Usage::

    python -m eval.offline_clip.evaluate [--weights PATH] [--config PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.offline_clip.train import (
    COLORS, DEFAULT_CONFIG, MODEL_NAME, SHAPES, encode_images, encode_texts, load_split, register_config,
)


def evaluate(weights: str, config: str, k: int = 5, threads: int = 2) -> dict:
    import torch
    import open_clip

    torch.set_num_threads(threads)
    register_config(Path(config))
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights))
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

    data = load_split("test")
    labels = torch.tensor([COLORS.index(c) * len(SHAPES) + SHAPES.index(s) for _, c, s in data])
    img = encode_images(model, preprocess, [p for p, _, _ in data])

    # (a) text -> image
    queries = [(f"a {c} {s}", COLORS.index(c) * len(SHAPES) + SHAPES.index(s)) for c in COLORS for s in SHAPES]
    txt = encode_texts(model, tokenizer, [q for q, _ in queries])
    top = (txt @ img.t()).topk(k, dim=1).indices
    per_query = {q: (labels[top[i]] == lab).float().mean().item() for i, (q, lab) in enumerate(queries)}
    t2i = sum(per_query.values()) / len(per_query)

    # (b) image -> image, query excluded
    sim = img @ img.t()
    sim.fill_diagonal_(-float("inf"))
    top = sim.topk(k, dim=1).indices
    i2i = (labels[top] == labels[:, None]).float().mean().item()

    # extra: zero-shot classification accuracy with the 24 queries as classes
    query_labels = torch.tensor([lab for _, lab in queries])
    zs = (query_labels[(img @ txt.t()).argmax(1)] == labels).float().mean().item()
    return {"text_to_image_p@5": t2i, "image_to_image_p@5": i2i, "zero_shot_acc_24": zs,
            "n_test_images": len(data), "worst_queries": sorted(per_query.items(), key=lambda x: x[1])[:3]}


def main(argv=None):
    default_dir = Path(DEFAULT_CONFIG).parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(default_dir / f"{MODEL_NAME}.safetensors"))
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    res = evaluate(args.weights, args.config, threads=args.threads)
    print(f"text->image P@5 (24 'a {{color}} {{shape}}' queries): {res['text_to_image_p@5']:.4f}")
    print(f"image->image P@5 (1000 test images, self excluded): {res['image_to_image_p@5']:.4f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
