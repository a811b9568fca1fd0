"""API keys for ``mmrag serve``: bearer tokens with scopes and the collections they may touch.

A token looks like ``mmrag_<key id>_<secret>``. Only ``sha256(token)`` is stored: tokens are 256-bit
random values, so a slow password hash (bcrypt, scrypt) buys nothing against guessing and would
cost every request a few milliseconds; a fast hash still means a leaked key file reveals no token.
The key id (public, in the token) finds the entry; the hash is compared in constant time.

Scopes imply each other downwards: ``admin`` ⊃ ``write`` ⊃ ``read``.

* ``read``: search, answer, chat completions, list collections it may see.
* ``write``: upload and delete documents.
* ``admin``: drop whole collections.

``collections`` is a list of collection names, or ``["*"]`` for all of them.

The key file is JSON, written atomically with mode 0600 (``mmrag keys create`` manages it)::

    {"keys": [{"id": "3f9c1a2b", "name": "chat-bot", "hash": "sha256:…", "scopes": ["read"],
               "collections": ["handbook"], "created": "2026-11-26T16:00:00+00:00"}]}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from mmrag.errors import ConfigError, InvalidInputError, NotFoundError

SCOPES = ("read", "write", "admin")
_IMPLIED = {"admin": {"admin", "write", "read"}, "write": {"write", "read"}, "read": {"read"}}
_TOKEN = re.compile(r"^mmrag_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})$")


@dataclass(frozen=True)
class ApiKey:
    """One key's stored entry (never the token itself)."""

    id: str
    name: str
    hash: str
    scopes: tuple[str, ...]
    collections: tuple[str, ...] = ("*",)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def allows(self, scope: str, collection: str | None = None) -> bool:
        """Whether this key holds ``scope`` (directly or implied) for ``collection``."""
        held = set().union(*(_IMPLIED[s] for s in self.scopes if s in _IMPLIED))
        if scope not in held:
            return False
        return collection is None or self.sees(collection)

    def sees(self, collection: str) -> bool:
        """Whether this key may touch ``collection`` at all."""
        return "*" in self.collections or collection in self.collections


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """The API keys of one server, kept in a JSON file.

    Args:
        path: the key file. A missing file means no keys (every request is refused).

    Example:
        >>> store = KeyStore(Path("keys.json"))                                  # doctest: +SKIP
        >>> token, key = store.create("bot", scopes=["read"], collections=["kb"])  # doctest: +SKIP
        >>> store.authenticate(token).name                                        # doctest: +SKIP
        'bot'
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def keys(self) -> list[ApiKey]:
        """All keys, reloading the file when it changed (a key created or revoked while serving)."""
        self._reload()
        return list(self._keys.values())

    def authenticate(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to, or None."""
        match = _TOKEN.match(token.strip())
        if not match:
            return None
        self._reload()
        key = self._keys.get(match.group(1))
        if key is None or not hmac.compare_digest(key.hash, hash_token(token.strip())):
            return None
        return key

    def create(self, name: str, *, scopes: Iterable[str], collections: Iterable[str] = ("*",)) -> tuple[str, ApiKey]:
        """Make a key; returns the token (shown once, never stored) and its entry.

        Raises:
            InvalidInputError: an unknown scope, or no scope / collection at all.
        """
        scopes = tuple(dict.fromkeys(scopes))
        collections = tuple(dict.fromkeys(collections))
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise InvalidInputError(f"scopes must be some of {', '.join(SCOPES)}; got {list(scopes)}")
        if not collections:
            raise InvalidInputError("a key needs at least one collection, or '*' for all")
        self._reload()
        key_id = secrets.token_hex(4)
        while key_id in self._keys:
            key_id = secrets.token_hex(4)
        token = f"mmrag_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, name, hash_token(token), scopes, collections)
        self._keys[key_id] = key
        self._save()
        return token, key

    def revoke(self, key_id: str) -> ApiKey:
        """Delete a key by id.

        Raises:
            NotFoundError: no such key.
        """
        self._reload()
        key = self._keys.pop(key_id, None)
        if key is None:
            raise NotFoundError(f"no API key with id {key_id!r} in {self.path}")
        self._save()
        return key

    # -- file ---------------------------------------------------------------------------------
    def _reload(self) -> None:
        try:
            st = self.path.stat()
            mtime = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._keys, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            keys = [ApiKey(k["id"], k.get("name", ""), k["hash"], tuple(k["scopes"]), tuple(k.get("collections", ["*"])),
                           k.get("created", "")) for k in raw["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"API key file {self.path} is unreadable ({exc}); fix it or recreate it with "
                              "`mmrag keys create`") from exc
        self._keys = {k.id: k for k in keys}
        self._mtime = mtime

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"keys": [{**asdict(k), "scopes": list(k.scopes), "collections": list(k.collections)}
                         for k in self._keys.values()]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        st = self.path.stat()
        self._mtime = (st.st_mtime_ns, st.st_size)
