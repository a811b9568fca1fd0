"""Logging set-up for mmrag's applications (CLI, demo, server): one line per event, quiet parsers."""

from __future__ import annotations

import logging
import os

#: Third-party loggers that narrate routine work (or every oddity of a broken file) at INFO/DEBUG;
#: mmrag reports per-file outcomes and model choices itself.
NOISY = {"pypdf": logging.ERROR, "bm25s": logging.WARNING, "huggingface_hub": logging.ERROR,
         "sentence_transformers": logging.WARNING, "chromadb": logging.WARNING, "httpx": logging.WARNING}


def configure_logging(level: int = logging.WARNING) -> None:
    """Configure the root logger once and quiet chatty libraries. Call it from an entry point only."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name, floor in NOISY.items():
        logging.getLogger(name).setLevel(max(level, floor))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Libraries' own tqdm bars (e.g. transformers' GGUF conversion); mmrag's bar passes disable=False.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
