"""easy-vqa: colour/shape labels for its images, and mmrag retrieval datasets built from them.

easy-vqa (PyPI, MIT) ships 4,000 train and 1,000 test 64x64 images, each one coloured shape, with
question/answer pairs rather than captions. :func:`load_split` derives each image's colour and
shape from its Q/A pairs (intersecting what every answer implies) and, for the ~10% of images whose
questions leave it open, from the pixels (the shape is drawn in one exact palette colour); the pixel
reading is cross-checked against every Q/A-determined label.

Build the test-split datasets (the offline CLIP model never trains on this split)::

    .venv/bin/python -m eval.datasets.easyvqa --split test --out eval/datasets/easyvqa-test
    mmrag ingest eval/datasets/easyvqa-test/images --profile offline --collection easyvqa
    mmrag eval retrieval eval/datasets/easyvqa-test/text_to_image.jsonl --k 5 --profile offline --collection easyvqa
    mmrag eval retrieval eval/datasets/easyvqa-test/image_to_image.jsonl --k 5 --profile offline --collection easyvqa

``text_to_image.jsonl`` holds the 24 queries "a {colour} {shape}"; ``image_to_image.jsonl`` one
query per image, whose relevant documents are the other images of the same colour and shape.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
# Exact RGB values easy-vqa draws its shapes with (checked against the Q/A labels).
PALETTE = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
    "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}


def _candidates_from_questions(texts, answers, image_ids) -> Dict[int, Dict[str, set]]:
    """Intersect the colour/shape candidate sets implied by every Q/A pair."""
    cand: Dict[int, Dict[str, set]] = {}
    for text, ans, iid in zip(texts, answers, image_ids):
        c = cand.setdefault(int(iid), {"color": set(COLORS), "shape": set(SHAPES)})
        t = text.strip().rstrip("?").lower()
        if re.fullmatch(r"what (color is|is the color of) the (shape|circle|rectangle|triangle)", t):
            c["color"] &= {ans}
            noun = t.split()[-1]
            if noun in SHAPES:
                c["shape"] &= {noun}
        elif re.fullmatch(r"what shape (is in the image|does the image contain|is present)", t):
            c["shape"] &= {ans}
        elif m := re.fullmatch(r"what is the (\w+) shape", t):
            c["color"] &= {m.group(1)}
            c["shape"] &= {ans}
        else:  # yes/no question about one colour or one shape, possibly negated
            if ans not in ("yes", "no"):
                raise ValueError(f"unrecognised easy-vqa question: {text!r} -> {ans!r}")
            words = set(t.split())
            negated = bool(words & {"not", "no"})
            holds = (ans == "yes") != negated
            cols = [w for w in COLORS if w in words]
            shps = [w for w in SHAPES if w in words]
            if len(cols) + len(shps) != 1:
                raise ValueError(f"unrecognised easy-vqa question: {text!r}")
            key, val = ("color", cols[0]) if cols else ("shape", shps[0])
            if holds:
                c[key] &= {val}
            else:
                c[key] -= {val}
    return cand


def _label_from_pixels(path: str) -> Tuple[str, str]:
    """Read (colour, shape) from the image: exact palette colour + row-width profile."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    counts = {k: int((a == np.array(v)).all(-1).sum()) for k, v in PALETTE.items()}
    color = max(counts, key=counts.get)
    mask = (a == np.array(PALETTE[color])).all(-1)
    rows = mask.sum(1)
    rows = rows[rows > 0]
    top, bottom = rows[0] / rows.max(), rows[-1] / rows.max()
    if top > 0.8 and bottom > 0.8:
        shape = "rectangle"
    elif bottom > 0.8:  # easy-vqa triangles are upright: narrow top, full-width base
        shape = "triangle"
    else:
        shape = "circle"
    return color, shape


def load_split(split: str) -> List[Tuple[str, str, str]]:
    """Return [(image_path, colour, shape)] for easy-vqa's 'train' or 'test' split, by image id."""
    import easy_vqa

    if split == "train":
        qs, paths = easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
    elif split == "test":
        qs, paths = easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
    else:
        raise ValueError(split)
    cand = _candidates_from_questions(*qs)
    out = []
    for iid in sorted(paths):
        path = paths[iid]
        pc, ps = _label_from_pixels(path)
        c = cand.get(iid, {"color": set(COLORS), "shape": set(SHAPES)})
        for key, val in (("color", pc), ("shape", ps)):
            if val not in c[key]:
                raise RuntimeError(f"{split} image {iid}: pixels say {key}={val}, Q/A say {c[key]}")
        color = next(iter(c["color"])) if len(c["color"]) == 1 else pc
        shape = next(iter(c["shape"])) if len(c["shape"]) == 1 else ps
        out.append((path, color, shape))
    return out


def build(split: str, out: Path) -> tuple[int, int]:
    """Copy the split's images to ``out/images`` and write the two datasets. Returns their sizes."""
    rows = load_split(split)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    by_class: Dict[Tuple[str, str], List[str]] = {}
    docs = []
    for path, color, shape in rows:
        doc_id = Path(path).name
        shutil.copyfile(path, images / doc_id)
        by_class.setdefault((color, shape), []).append(doc_id)
        docs.append((doc_id, color, shape))
    with (out / "text_to_image.jsonl").open("w") as fh:
        for (color, shape), ids in sorted(by_class.items()):
            fh.write(json.dumps({"id": f"{color}-{shape}", "query": f"a {color} {shape}", "relevant": sorted(ids)}) + "\n")
    n_img = 0
    with (out / "image_to_image.jsonl").open("w") as fh:
        for doc_id, color, shape in docs:
            others = sorted(i for i in by_class[(color, shape)] if i != doc_id)
            if others:
                fh.write(json.dumps({"id": doc_id, "query_image": f"images/{doc_id}", "relevant": others}) + "\n")
                n_img += 1
    return len(by_class), n_img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    n_text, n_image = build(args.split, args.out)
    print(f"wrote {args.out}/images, {n_text} text->image and {n_image} image->image queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
