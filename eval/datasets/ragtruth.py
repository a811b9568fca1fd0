"""RAGTruth QA (the FaithJudge subset): labelled answers for ``mmrag eval hallucination``.

    .venv/bin/python -m eval.datasets.ragtruth ../shared/data/ragtruth_qa --out eval/reports/ragtruth
    mmrag eval hallucination eval/reports/ragtruth/ragtruth_qa.jsonl --profile offline

reads ``ragtruth_qa_flat.jsonl`` (one line per generated answer, see the folder's SOURCE.md) and
writes ``OUT/ragtruth_qa.jsonl`` with one ``{"id", "question", "context", "answer", "label"}`` line per
answer: ``label`` is 1 when the annotators marked at least one hallucinated span (implicit_true spans
included, as in the published numbers), else 0. The generator's name is left out on purpose: a
detector must judge the text, not who wrote it.

The passages are MS MARCO's (non-commercial research terms), so the output stays under ``eval/`` and
is never shipped (``eval/reports/`` is gitignored), and nothing fitted to it goes into ``src/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FLAT = "ragtruth_qa_flat.jsonl"
REQUIRED = ("id", "question", "context", "answer", "hallucinated")


def convert(folder: Path, out: Path) -> tuple[int, int]:
    """Write ``OUT/ragtruth_qa.jsonl``; return (answers, hallucinated answers)."""
    source = folder / FLAT
    if not source.is_file():
        raise SystemExit(f"{source}: missing (is this the ragtruth_qa folder from ../shared/data?)")
    out.mkdir(parents=True, exist_ok=True)
    n = positives = 0
    with source.open(encoding="utf-8") as src, (out / "ragtruth_qa.jsonl").open("w", encoding="utf-8") as fh:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise SystemExit(f"{source}:{lineno}: missing field(s) {missing}")
            label = int(row["hallucinated"])
            fh.write(json.dumps({"id": str(row["id"]), "question": row["question"], "context": row["context"],
                                 "answer": row["answer"], "label": label}, ensure_ascii=False) + "\n")
            n += 1
            positives += label
    return n, positives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the ragtruth_qa folder (holds ragtruth_qa_flat.jsonl)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    n, positives = convert(args.folder, args.out)
    print(f"wrote {n} answers ({positives} hallucinated) to {args.out / 'ragtruth_qa.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
