"""Each manifest table has one owner, and only the owner's module holds SQL on it (issue 24: 53
statements on manifest tables sat in four other modules, so renaming a column touched six files)."""

from __future__ import annotations

import re
from pathlib import Path

from mmrag.manifest import SCHEMA

SRC = Path(__file__).resolve().parents[2] / "src" / "mmrag"
OWNERS = {
    "documents": "manifest.py", "files": "manifest.py", "status_counts": "manifest.py", "flags": "manifest.py",
    "roots": "manifest.py", "versions": "lifecycle/versions.py", "alias_history": "lifecycle/versions.py",
    "events": "lifecycle/versions.py", "probes": "lifecycle/probes.py", "drift_refs": "lifecycle/driftrefs.py",
}
#: Reads of another owner's table that stay, each with why: the roots are kept per knowledge base, and
#: the manifest finds a version's knowledge base in ``versions`` (``KB_OF``, and the migration that
#: backfilled the roots), inside the same statement, so it never writes that table.
ALLOWED = {("manifest.py", "versions")}
#: SQL that names a table: what a statement reads, writes or deletes.
STATEMENT = r"\b(?:FROM|INTO|UPDATE|JOIN)\s+{table}\b"


def test_every_table_of_the_schema_has_an_owner() -> None:
    assert set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)) == set(OWNERS)


def test_only_a_tables_owner_holds_sql_on_it() -> None:
    stray = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        text = path.read_text()
        for table, owner in OWNERS.items():
            if rel != owner and (rel, table) not in ALLOWED and re.search(STATEMENT.format(table=table), text):
                stray.append(f"{rel}: SQL on {table} (owner: {owner})")
    assert stray == []


def test_the_manifest_only_reads_versions() -> None:
    text = (SRC / "manifest.py").read_text()
    assert not re.search(r"\b(?:INTO|UPDATE)\s+(?:versions|alias_history|events)\b|DELETE FROM versions", text)
