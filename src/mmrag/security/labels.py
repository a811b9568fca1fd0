"""Access labels and the filter that enforces them inside every index's query.

A document carries zero or more labels, each ``group:<name>`` or ``user:<name>``. A caller holds
the labels of its groups (and ``user:<subject>`` when it has a subject). It may read a document
when they share a label, or when the document has none and unlabelled documents are ``public``
(the default; ``access.unlabelled = "private"`` hides them from every restricted caller).

How the labels are stored: Chroma 1.5.9's ``where`` has no "list contains" operator that the
keyword index and the test fake evaluate alike, so each label becomes a boolean metadata key of
its own (``acl:group:finance: true``), plus ``acl: true`` on every record of a labelled document
and ``access: "group:finance,group:hr"`` for people to read. A caller's filter is then plain
equality under ``$or``, which Chroma, tantivy (:func:`mmrag.stores.tantivy.where_query`) and the
fake all evaluate before their top k, so a caller still gets k hits however many forbidden
documents rank above them::

    {"$or": [{"acl": {"$ne": true}}, {"acl:group:finance": true}, {"acl:user:alice": true}]}

``$ne`` matches records without the key (Chroma's semantics, kept by every index), which is how
documents written before labels existed stay public.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from mmrag.errors import InvalidInputError

#: ``True`` on every record of a labelled document.
FLAG_KEY = "acl"
#: Prefix of the one boolean key per label.
LABEL_PREFIX = "acl:"
#: The labels, comma-joined, for people (search hits show it; a JSONL field of this name sets them).
LABELS_KEY = "access"
#: What unlabelled documents are to a restricted caller (``access.unlabelled``).
UNLABELLED = ("public", "private")
KINDS = ("group", "user")
_LABEL = re.compile(r"^(group|user):[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
#: Labels one caller may hold: each is one condition of the filter (the indexes take 256 at most).
MAX_CALLER_LABELS = 200


class NoAccess(Exception):
    """The caller can read no document at all: the answer is empty without asking any index."""


def parse_labels(values: Iterable[str] | str | None, where: str = "access") -> tuple[str, ...]:
    """Validate labels; each value may hold several, separated by commas or spaces.

    Args:
        values: labels such as ``group:finance`` or ``user:alice@example.com``.
        where: what to name in an error (an option, a file, a JSONL field).

    Returns:
        The distinct labels, sorted.

    Raises:
        InvalidInputError: a label is not ``group:<name>`` or ``user:<name>`` (names of letters,
            digits and ``_ . @ + -``).

    Example:
        >>> parse_labels(["group:hr, group:finance", "group:hr"])
        ('group:finance', 'group:hr')
    """
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise InvalidInputError(f"{where}: labels are strings such as group:finance, got {value!r}")
        for part in re.split(r"[,\s]+", value.strip()):
            if not part:
                continue
            if not _LABEL.match(part):
                raise InvalidInputError(f"{where}: invalid access label {part!r}; write group:<name> or user:<name> "
                                        "(letters, digits and _ . @ + -), e.g. group:finance")
            out.add(part)
    return tuple(sorted(out))


def check_groups(groups: Iterable[str], where: str = "groups") -> tuple[str, ...]:
    """Validate group names (without the ``group:`` prefix); ``*`` means every document.

    Raises:
        InvalidInputError: a name with other characters, naming ``where``.
    """
    out = []
    for name in groups:
        name = str(name).strip()
        if not name:
            continue
        if name != "*" and not _NAME.match(name):
            raise InvalidInputError(f"{where}: invalid group name {name!r} (letters, digits and _ . @ + -; or * for all)")
        out.append(name)
    return tuple(sorted(set(out)))


def label_metadata(labels: Iterable[str]) -> dict[str, Any]:
    """The metadata keys a record of a document with ``labels`` carries (empty for none)."""
    labels = sorted(set(labels))
    if not labels:
        return {}
    return {FLAG_KEY: True, LABELS_KEY: ",".join(labels), **{LABEL_PREFIX + label: True for label in labels}}


def label_changes(old: Mapping[str, Any], labels: Iterable[str]) -> dict[str, Any]:
    """A metadata update that turns ``old``'s labels into ``labels`` (``None`` deletes a key, as in Chroma)."""
    new = label_metadata(labels)
    stale = {key: None for key in old if is_label_key(key) and key not in new}
    return {**stale, **new}


def is_label_key(key: str) -> bool:
    """Whether a metadata key is one of the access keys."""
    return key in (FLAG_KEY, LABELS_KEY) or key.startswith(LABEL_PREFIX)


def labels_of(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The labels a record's metadata carries."""
    return tuple(sorted(k[len(LABEL_PREFIX):] for k, v in meta.items() if k.startswith(LABEL_PREFIX) and v is True))


@dataclass(frozen=True)
class Caller:
    """Who is asking: the groups (and subject) whose documents it may read.

    Args:
        groups: group names (``finance``, not ``group:finance``); ``*`` reads everything.
        subject: a user name; documents labelled ``user:<subject>`` are readable too.
        unrestricted: reads every document (the local CLI, a server without auth, a ``*`` key).

    Example:
        >>> Caller(groups=frozenset({"hr"}), subject="ann").labels
        ('group:hr', 'user:ann')
    """

    groups: frozenset[str] = field(default_factory=frozenset)
    subject: str | None = None
    unrestricted: bool = False

    def __post_init__(self) -> None:
        groups = frozenset(check_groups(self.groups))
        object.__setattr__(self, "groups", groups)
        if "*" in groups:
            object.__setattr__(self, "unrestricted", True)
        if self.subject is not None and not _NAME.match(self.subject):
            raise InvalidInputError(f"subject: invalid user name {self.subject!r} (letters, digits and _ . @ + -)")
        if len(self.labels) > MAX_CALLER_LABELS:
            raise InvalidInputError(f"a caller holds at most {MAX_CALLER_LABELS} groups, got {len(self.labels)}")

    @classmethod
    def everyone(cls) -> "Caller":
        """A caller that reads every document."""
        return cls(unrestricted=True)

    @classmethod
    def of(cls, groups: Iterable[str] | None, subject: str | None = None) -> "Caller":
        """A restricted caller with these groups (``["*"]``: unrestricted)."""
        return cls(groups=frozenset(groups or ()), subject=subject)

    @property
    def labels(self) -> tuple[str, ...]:
        """The document labels this caller holds."""
        held = [f"group:{g}" for g in self.groups if g != "*"]
        if self.subject:
            held.append(f"user:{self.subject}")
        return tuple(sorted(held))


def access_where(caller: Caller | None, unlabelled: str = "public") -> dict[str, Any] | None:
    """The ``where`` a caller's every query is ANDed with; None for an unrestricted caller (or None).

    Raises:
        NoAccess: the caller can read nothing (no labels, and unlabelled documents are private).
        InvalidInputError: ``unlabelled`` is not ``public`` or ``private``.
    """
    if unlabelled not in UNLABELLED:
        raise InvalidInputError(f"access.unlabelled must be one of {', '.join(UNLABELLED)}, got {unlabelled!r}")
    if caller is None or caller.unrestricted:
        return None
    clauses: list[dict[str, Any]] = [{FLAG_KEY: {"$ne": True}}] if unlabelled == "public" else []
    clauses += [{LABEL_PREFIX + label: True} for label in caller.labels]
    if not clauses:
        raise NoAccess
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def can_read(caller: Caller | None, meta: Mapping[str, Any], unlabelled: str = "public") -> bool:
    """Whether ``caller`` may read a record with this metadata (the same rule as :func:`access_where`)."""
    if caller is None or caller.unrestricted:
        return True
    if meta.get(FLAG_KEY) is not True:
        return unlabelled == "public"
    return bool(set(labels_of(meta)) & set(caller.labels))
