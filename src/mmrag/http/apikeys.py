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

``groups`` names the caller's groups for per-document access (:mod:`mmrag.security`): the key
reads documents labelled ``group:<one of them>`` and unlabelled ones (unless
``access.unlabelled = "private"``); ``["*"]`` reads every document. A key without groups (every
key made before groups existed) reads unlabelled documents only.

The key file is JSON, written atomically with mode 0600 (``mmrag keys create`` manages it)::

    {"keys": [{"id": "3f9c1a2b", "name": "chat-bot", "hash": "sha256:…", "scopes": ["read"],
               "collections": ["handbook"], "groups": ["support"], "created": "2026-11-26T16:00:00+00:00"}]}

Several processes share the file (``mmrag keys create`` and ``revoke`` while the server runs, and
several server workers), so every change is a read-modify-write under an exclusive ``flock`` on
``<key file>.lock`` beside it: without it, a revoke racing a create could write the revoked key
back, and parallel creates lost each other's keys. Readers take no lock: a write replaces the file
in one ``os.replace``, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from mmrag.errors import ConfigError, InvalidInputError, NotFoundError
from mmrag.locks import fsync_dir
from mmrag.security.labels import Caller, check_groups

SCOPES = ("read", "write", "admin")
_IMPLIED = {"admin": {"admin", "write", "read"}, "write": {"write", "read"}, "read": {"read"}}
_TOKEN = re.compile(r"^mmrag_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})$")
#: Seconds a cached key file is trusted while its (inode, size, mtime) stay the same. Timestamps
#: are as coarse as the kernel's clock tick (or a second on some file systems), so two writes in
#: one tick can leave the same size and mtime; re-reading now and then bounds how long a
#: revocation can go unseen. Reading a few KB once a second costs nothing.
RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class ApiKey:
    """One key's stored entry (never the token itself)."""

    id: str
    name: str
    hash: str
    scopes: tuple[str, ...]
    collections: tuple[str, ...] = ("*",)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    #: Groups whose documents the key reads (``*``: all); see the module docstring.
    groups: tuple[str, ...] = ()
    #: The user a token from an identity provider stands for (documents labelled ``user:<subject>``).
    subject: str | None = None

    def caller(self) -> Caller:
        """The per-document access this key grants."""
        return Caller.of(self.groups, self.subject)

    def allows(self, scope: str, collection: str | None = None) -> bool:
        """Whether this key holds ``scope`` (directly or implied) for ``collection``."""
        held = set().union(*(_IMPLIED[s] for s in self.scopes if s in _IMPLIED))
        if scope not in held:
            return False
        return collection is None or self.sees(collection)

    def sees(self, collection: str) -> bool:
        """Whether this key may touch ``collection`` at all (a key for ``kb`` sees each version ``kb@N``)."""
        return "*" in self.collections or collection.split("@", 1)[0] in self.collections


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """The API keys of one server, kept in a JSON file.

    Args:
        path: the key file. A missing file means no keys (every request is refused).
            ``<path>.lock`` beside it serialises writers across processes.

    Example:
        >>> store = KeyStore(Path("keys.json"))                                  # doctest: +SKIP
        >>> token, key = store.create("bot", scopes=["read"], collections=["kb"])  # doctest: +SKIP
        >>> store.authenticate(token).name                                        # doctest: +SKIP
        'bot'
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._signature: tuple[int, int, int] | None = None
        self._raw: bytes | None = None
        self._checked = 0.0
        self._keys: dict[str, ApiKey] = {}
        # Server threads authenticate through one store; the lock keeps a reload's fields together.
        self._mutex = threading.Lock()

    def keys(self) -> list[ApiKey]:
        """All keys, reloading the file when it changed (a key created or revoked while serving).

        Raises:
            ConfigError: the key file is unreadable.
        """
        return list(self._reload().values())

    def authenticate(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to, or None.

        Raises:
            ConfigError: the key file is unreadable.
        """
        match = _TOKEN.match(token.strip())
        if not match:
            return None
        key = self._reload().get(match.group(1))
        if key is None or not hmac.compare_digest(key.hash, hash_token(token.strip())):
            return None
        return key

    def create(self, name: str, *, scopes: Iterable[str], collections: Iterable[str] = ("*",),
               groups: Iterable[str] = ()) -> tuple[str, ApiKey]:
        """Make a key; returns the token (shown once, never stored) and its entry.

        Args:
            name: a name for people.
            scopes: ``read``, ``write``, ``admin``.
            collections: collection names, or ``*``.
            groups: the groups whose labelled documents it reads (``*``: every document).

        Raises:
            InvalidInputError: an unknown scope, no scope / collection at all, or a bad group name.
            ConfigError: the key file is unreadable.
        """
        groups = check_groups(groups, "groups")
        scopes = tuple(dict.fromkeys(scopes))
        collections = tuple(dict.fromkeys(collections))
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise InvalidInputError(f"scopes must be some of {', '.join(SCOPES)}; got {list(scopes)}")
        if not collections:
            raise InvalidInputError("a key needs at least one collection, or '*' for all")
        with self._exclusive():
            keys = self._reload(force=True)
            key_id = secrets.token_hex(4)
            while key_id in keys:
                key_id = secrets.token_hex(4)
            token = f"mmrag_{key_id}_{secrets.token_urlsafe(32)}"
            key = ApiKey(key_id, name, hash_token(token), scopes, collections, groups=groups)
            self._save({**keys, key_id: key})
        return token, key

    def revoke(self, key_id: str) -> ApiKey:
        """Delete a key by id.

        Raises:
            NotFoundError: no such key.
            ConfigError: the key file is unreadable.
        """
        with self._exclusive():
            keys = dict(self._reload(force=True))
            key = keys.pop(key_id, None)
            if key is None:
                raise NotFoundError(f"no API key with id {key_id!r} in {self.path}")
            self._save(keys)
        return key

    # -- file ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the writers' lock: other processes' (and threads') changes wait for this one.

        ``flock`` belongs to the open file, so the kernel releases it when the holder dies: a
        killed ``mmrag keys create`` never leaves a stale lock.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _reload(self, *, force: bool = False) -> dict[str, ApiKey]:
        """The keys on disk, re-read when the file changed (or ``force``: writers read under the lock)."""
        with self._mutex:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._keys, self._signature, self._raw = {}, None, None
                return self._keys
            # The inode changes with every write (os.replace of a fresh file), even when the size
            # and the coarse mtime do not.
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            now = time.monotonic()
            if not force and signature == self._signature and now - self._checked < RECHECK_SECONDS:
                return self._keys
            try:
                raw = self.path.read_bytes()
                if raw != self._raw:
                    self._keys = _parse(raw)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"API key file {self.path} is unreadable ({exc}); fix it or recreate it with "
                                  "`mmrag keys create`") from exc
            self._raw, self._signature, self._checked = raw, signature, now
            return self._keys

    def _save(self, keys: dict[str, ApiKey]) -> None:
        """Replace the key file atomically (same-folder temp file, fsync, rename), mode 0600."""
        data = {"keys": [{**{f: v for f, v in asdict(k).items() if f != "subject"}, "scopes": list(k.scopes),
                          "collections": list(k.collections), "groups": list(k.groups)} for k in keys.values()]}
        # mkstemp creates the file 0600, so the secrets' hashes are never readable by others, not
        # even for the moment before the rename.
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
        # Without this, a crash right after a revoke could bring the revoked key back.
        fsync_dir(self.path.parent)
        with self._mutex:
            self._keys, self._signature, self._raw = dict(keys), None, None


def _parse(raw: bytes) -> dict[str, ApiKey]:
    data = json.loads(raw.decode("utf-8"))
    keys = [ApiKey(k["id"], k.get("name", ""), k["hash"], tuple(k["scopes"]), tuple(k.get("collections", ["*"])),
                   k.get("created", ""), groups=tuple(k.get("groups", ()))) for k in data["keys"]]
    return {k.id: k for k in keys}


