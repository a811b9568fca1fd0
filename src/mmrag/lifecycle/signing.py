"""Snapshot signatures: an HMAC-SHA256 of ``snapshot.json`` under a key of the data dir.

A snapshot's digest and file checksums are plain sha256, which anyone who edits a snapshot can
recompute; they catch damage, not forgery. ``mmrag snapshot create`` therefore also signs the
index (which lists every file's sha256) with the data dir's key, ``DATA_DIR/snapshot.key`` (32
random bytes, hex, created mode 0600 on the first snapshot). A restore accepts:

* a snapshot signed with this data dir's key (its own snapshots);
* one signed with the key given as ``--key FILE`` (another machine's ``snapshot.key``, copied
  over a channel the user trusts);
* an unsigned one, or one signed with a key it does not hold, only with ``--trust-unsigned``.

A signature that does not match the key it names is refused whatever the flags: that snapshot
was altered after it was signed. How a snapshot was trusted decides whether the folders its
documents were ingested from are trusted too (see :mod:`mmrag.lifecycle.roots`): only a
snapshot of this data dir names folders of this machine.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrag.errors import InvalidInputError
from mmrag.locks import fsync_dir

KEY_FILE = "snapshot.key"
ALGORITHM = "hmac-sha256"
_KEY_BYTES = 32
_REFUSED = "Nothing was restored."


@dataclass(frozen=True)
class Trust:
    """How a snapshot was accepted: ``own`` (this data dir's key), ``key`` (``--key FILE``) or ``unsigned``."""

    how: str
    key_id: str | None = None


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (it reveals nothing of the key), written beside each signature."""
    return hashlib.sha256(b"mmrag-snapshot-key:" + key).hexdigest()[:16]


def read_key(path: Path) -> bytes:
    """Read a key file (64 hex digits).

    Raises:
        InvalidInputError: it cannot be read or holds no key.
    """
    try:
        with open(path, "rb") as fh:
            text = fh.read(1024).decode("ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not a snapshot key ({getattr(exc, 'strerror', None) or exc}); pass the "
                                f"{KEY_FILE} file of the data dir that made the snapshot") from exc
    if len(key) != _KEY_BYTES:
        raise InvalidInputError(f"{path} is not a snapshot key (it holds {len(key)} bytes, not {_KEY_BYTES}); pass "
                                f"the {KEY_FILE} file of the data dir that made the snapshot")
    return key


def data_dir_key(data_dir: Path) -> bytes | None:
    """This data dir's key, or ``None`` when it has none yet (a restore never creates one)."""
    path = Path(data_dir) / KEY_FILE
    return read_key(path) if path.exists() else None


def signing_key(data_dir: Path) -> bytes:
    """This data dir's key, created (mode 0600) on first use."""
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        return read_key(path)
    # Written aside and linked into place: two first snapshots at once agree on one key, and no
    # reader ever sees a half-written file.
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(_KEY_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return read_key(path)


def _mac(key: bytes, signed: dict[str, Any]) -> str:
    return hmac.new(key, json.dumps(signed, sort_keys=True, default=str).encode(), hashlib.sha256).hexdigest()


def sign(signed: dict[str, Any], key: bytes) -> dict[str, str]:
    """The ``signature`` entry for a snapshot index ``signed`` (everything but the signature itself)."""
    return {"algorithm": ALGORITHM, "key_id": key_id(key), "mac": _mac(key, signed)}


def check(snapshot: Path, index: dict[str, Any], *, data_dir: Path | None, key_file: Path | None,
          trust_unsigned: bool) -> Trust:
    """Decide whether to trust ``snapshot`` (see the module docstring).

    Args:
        snapshot: the folder, for messages.
        index: its parsed ``snapshot.json``.
        data_dir: the data dir restoring it (its key is read, never created), or ``None``.
        key_file: another data dir's key (``--key FILE``).
        trust_unsigned: accept a snapshot no held key signed (``--trust-unsigned``).

    Raises:
        InvalidInputError: the signature does not match, or nobody trusted signed it.
    """
    keys = {}
    if data_dir is not None and (own := data_dir_key(data_dir)) is not None:
        keys[key_id(own)] = ("own", own)
    if key_file is not None:
        given = read_key(key_file)
        keys.setdefault(key_id(given), ("key", given))
    signature = index.get("signature")
    flag = "pass --trust-unsigned to restore it anyway if you know where it comes from"
    if signature is None:
        if trust_unsigned:
            return Trust("unsigned")
        raise InvalidInputError(f"The snapshot {snapshot} is not signed (written by an mmrag before signatures, "
                                f"or stripped of its signature). {_REFUSED} Its checksums prove only that it is "
                                f"whole, not who wrote it: {flag}")
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM \
            or not all(isinstance(signature.get(k), str) for k in ("key_id", "mac")):
        raise InvalidInputError(f"The snapshot {snapshot} has a malformed signature in snapshot.json. {_REFUSED}")
    held = keys.get(signature["key_id"])
    if held is None:
        if trust_unsigned:
            return Trust("unsigned", signature["key_id"])
        mine = ", ".join(f"{k} ({how})" for k, (how, _) in keys.items()) or "none"
        raise InvalidInputError(
            f"The snapshot {snapshot} is signed with key {signature['key_id']}, which this restore does not hold (keys "
            f"held: {mine}). {_REFUSED} Pass --key FILE with the {KEY_FILE} of the data dir that made it (copied over "
            f"a channel you trust), or {flag}")
    how, key = held
    signed = {k: v for k, v in index.items() if k != "signature"}
    if not hmac.compare_digest(signature["mac"], _mac(key, signed)):
        raise InvalidInputError(f"The snapshot {snapshot} does not match its signature (key {signature['key_id']}): "
                                f"snapshot.json was altered after it was signed, or forged. {_REFUSED} Take a new "
                                "snapshot with `mmrag snapshot create`")
    return Trust(how, signature["key_id"])
