"""docs/configuration.md lists every setting of mmrag.config.Settings, with its variable and default.

The table is generated from the pydantic models and their ``#:`` comments; regenerate it after
changing config.py with `.venv/bin/python -m tests.docs.test_settings_doc`.
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from mmrag.config import Settings
from tests.conftest import REPO

PAGE = REPO / "docs" / "configuration.md"
MARKERS = ("<!-- settings -->", "<!-- /settings -->")


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's ``#:`` comment (the lines right above it), joined into one line."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(model).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        field = re.match(r"(\w+)\s*:", stripped)
        if field and pending:
            found[field.group(1)] = " ".join(pending)
        pending = []
    return found


def _default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`" if isinstance(value, (str, list)) else f"`{value}`"


def _values(field: object) -> str:
    """What a field accepts: a Literal's choices, a number's bounds, or its type."""
    annotation = field.annotation  # type: ignore[attr-defined]
    choices = [a for arg in typing.get_args(annotation) for a in (typing.get_args(arg) if typing.get_origin(arg) is typing.Literal else [])]
    if typing.get_origin(annotation) is typing.Literal:
        choices = list(typing.get_args(annotation))
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    bounds = []
    for item in field.metadata:  # type: ignore[attr-defined]
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                bounds.append(f"{sign} {getattr(item, attr)}")
    kind = re.sub(r"\b(typing|pathlib|pydantic\.types)\.", "", getattr(annotation, "__name__", None) or str(annotation))
    kind = kind.replace("NoneType", "None")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
    """(title, docstring paragraph, rows) for ``model`` and, after it, each nested section."""
    rows: list[tuple[str, str, str, str]] = []
    nested: list[tuple[str, str, list[tuple[str, str, str, str]]]] = []
    comments = _comments(model)
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            nested.extend(_sections(annotation, f"{variable}__"))
            continue
        rows.append((f"`{variable}`", _default(field.default), _values(field), comments.get(name, "")))
    doc = " ".join((inspect.getdoc(model) or "").split("\n\n")[0].split()).replace("``", "`")
    title = f"`{prefix}*`" if prefix != "MMRAG_" else "General"
    if prefix == "MMRAG_":
        doc = ("Where state lives, which models (`offline`: the bundled ones, no network), the collection a "
               "command uses, and the largest file an ingest reads.")
    return [(title, doc, rows), *nested]


def render() -> str:
    """The generated part of docs/configuration.md."""
    out = []
    for title, doc, rows in _sections(Settings, "MMRAG_"):
        if not rows:
            continue
        out += [f"## {title}", "", doc, "", "| variable | default | values | meaning |", "|---|---|---|---|"]
        out += [f"| {v} | {d} | {t.replace('|', '&#124;')} | {m.replace('``', '`').replace('|', '&#124;')} |"
                for v, d, t, m in rows]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _current() -> str:
    text = PAGE.read_text()
    start, end = (text.index(m) for m in MARKERS)
    return text[start + len(MARKERS[0]):end].strip("\n") + "\n"


def test_the_configuration_page_lists_every_setting() -> None:
    assert _current() == render(), "docs/configuration.md is stale: run .venv/bin/python -m tests.docs.test_settings_doc"


def test_every_setting_is_on_the_page_by_its_variable() -> None:
    """Independent of the renderer: walk the models and look for each variable in the page's text."""
    def variables(model: type[BaseModel], prefix: str) -> list[str]:
        names = []
        for name, field in model.model_fields.items():
            if inspect.isclass(field.annotation) and issubclass(field.annotation, BaseModel):
                names += variables(field.annotation, f"{prefix}{name.upper()}__")
            else:
                names.append(f"{prefix}{name.upper()}")
        return names

    text = PAGE.read_text()
    missing = [v for v in variables(Settings, "MMRAG_") if f"`{v}`" not in text]
    assert not missing and len(variables(Settings, "MMRAG_")) > 50, missing


def _write() -> None:
    text = PAGE.read_text()
    start, end = (text.index(m) for m in MARKERS)
    PAGE.write_text(text[:start + len(MARKERS[0])] + "\n" + render() + text[end:])


if __name__ == "__main__":
    _write()
