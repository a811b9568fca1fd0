"""Reading JSONL files whose every line must be a JSON object (datasets, labelled answers).

The ingestion loader (:mod:`mmrag.loaders.jsonl`) is different on purpose: there a bad record is
reported and skipped, here a bad line stops the read with a message naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from mmrag.errors import InvalidInputError, NotFoundError


def read_objects(path: Path | str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield ``(line number, where, object)`` for each non-blank line; ``where`` is ``"<path>: line <n>"``.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: a line is not valid JSON or not an object (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InvalidInputError(f"{where}: expected a JSON object")
            yield n, where, row
