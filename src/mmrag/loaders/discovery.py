"""Finding the files to ingest: a deterministic, loop-safe directory walk, and file hashing."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import LoadError
from mmrag.loaders._common import SUPPORTED_SUFFIXES, FileRef


@dataclass(frozen=True)
class DiscoveryProblem:
    """Something found while walking that cannot be ingested.

    Attributes:
        path: The path as found (absolute for anything found inside a directory).
        reason: Why it is skipped, in plain words.
    """

    path: str
    reason: str


def _printable(path: Path | str) -> str:
    """``path`` as a string that always encodes: undecodable bytes become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _not_utf8(path: Path | str) -> bool:
    # Python decodes file names with surrogateescape: bytes that are not UTF-8 become lone
    # surrogates, which sqlite, Chroma and JSON refuse to encode much later, mid-run, ending the
    # whole ingest. So such names are stopped here, at the door.
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _encodable(problem: DiscoveryProblem) -> DiscoveryProblem:
    # Other problems (a broken symlink, say) can name a non-UTF-8 path or link target too, and
    # the caller prints and stores them.
    if _not_utf8(problem.path) or _not_utf8(problem.reason):
        return DiscoveryProblem(_printable(problem.path), _printable(problem.reason))
    return problem


_RENAME = "rename it (e.g. with convmv) to ingest it"
_RENAME_DIR = "rename it (e.g. with convmv) to ingest the files in it"


def _unsupported(suffix: str) -> str:
    kind = f"'{suffix}'" if suffix else "(no extension)"
    return f"unsupported file type {kind}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}"


def _stat_problem(path: Path, exc: OSError) -> DiscoveryProblem:
    if exc.errno == errno.ELOOP:
        return DiscoveryProblem(str(path), "symlink loop: the link points (indirectly) to itself")
    if isinstance(exc, FileNotFoundError):
        if path.is_symlink():
            return DiscoveryProblem(str(path), f"broken symlink: target {os.readlink(path)!r} does not exist")
        return DiscoveryProblem(str(path), "no such file or directory")
    if isinstance(exc, PermissionError):
        return DiscoveryProblem(str(path), "permission denied")
    return DiscoveryProblem(str(path), f"cannot access: {exc.strerror or exc}")


def _file(path: Path, root: Path, st: os.stat_result) -> FileRef | DiscoveryProblem:
    if _not_utf8(path):
        where = "file name" if _not_utf8(path.name) else "path"
        return DiscoveryProblem(_printable(path), f"{where} is not valid UTF-8: {_RENAME}")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO would block forever; devices and sockets are not documents either.
        return DiscoveryProblem(str(path), "not a regular file (FIFO, socket or device)")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return DiscoveryProblem(str(path), _unsupported(suffix))
    if not os.access(path, os.R_OK):
        return DiscoveryProblem(str(path), "permission denied: the file is not readable")
    return FileRef.from_path(path, root)


def _scan(directory: Path) -> list[os.DirEntry[str]] | DiscoveryProblem:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except PermissionError:
        return DiscoveryProblem(str(directory), "cannot read directory: permission denied")
    except OSError as exc:
        return DiscoveryProblem(str(directory), f"cannot read directory: {exc.strerror or exc}")


_Key = tuple[int, int]  # (st_dev, st_ino): a directory's identity, whatever the route to it
_Frame = tuple[Path, frozenset[_Key], Iterator[os.DirEntry[str]]]


def _walk(root: Path, root_stat: os.stat_result, visited: set[_Key]) -> Iterator[FileRef | DiscoveryProblem]:
    # Iterative depth-first walk: no recursion limit on deep trees. Each frame carries the
    # (device, inode) keys of its ancestors, so a symlink back up the tree is named as a loop,
    # and ``visited`` stops a directory reachable twice from being walked twice. Symlinked
    # directories are deferred until the real tree is done, so a file's id follows its real
    # location rather than whichever route sorts first.
    root_key = (root_stat.st_dev, root_stat.st_ino)
    visited.add(root_key)
    stack: list[_Frame] = []
    deferred: list[tuple[Path, frozenset[_Key]]] = [(root, frozenset())]
    while stack or deferred:
        if not stack:
            directory, ancestors = deferred.pop(0)
            try:
                st = os.stat(directory)
            except OSError as exc:
                yield _stat_problem(directory, exc)
                continue
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                target = os.path.realpath(directory)
                yield DiscoveryProblem(str(directory), f"symlink loop: points to its ancestor {target}")
                continue
            if key in visited and directory != root:
                continue  # already walked through its real path or another link
            visited.add(key)
            listing = _scan(directory)
            if isinstance(listing, DiscoveryProblem):
                yield listing
                continue
            stack.append((directory, ancestors | {key}, iter(listing)))
        directory, ancestors, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as exc:
            yield _stat_problem(path, exc)
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield _file(path, root, st)
            continue
        if _not_utf8(entry.name):
            # One problem for the directory rather than one per file in it: none of their ids
            # could be stored.
            yield DiscoveryProblem(_printable(path), f"directory name is not valid UTF-8: {_RENAME_DIR}")
            continue
        key = (st.st_dev, st.st_ino)
        if entry.is_symlink() or key in ancestors:
            deferred.append((path, ancestors))
            continue
        if key in visited:
            continue
        visited.add(key)
        listing = _scan(path)
        if isinstance(listing, DiscoveryProblem):
            yield listing
            continue
        stack.append((path, ancestors | {key}, iter(listing)))


def discover(paths: Sequence[Path]) -> Iterator[FileRef | DiscoveryProblem]:
    """Walk files and directories and yield what can be loaded, and what cannot.

    Directories are walked depth-first in sorted name order, so two runs over the same tree
    yield the same sequence. Hidden files and directories (names starting with ``.``) inside a
    walked directory are skipped silently; a hidden path given explicitly is used. Symlinks are
    followed, to files and directories alike, but a directory is never walked twice, and a link
    back to an ancestor is reported as a loop instead of hanging.

    A path that is not valid UTF-8 (a file or directory name in a legacy encoding) is reported
    rather than yielded, since its id could not be stored; a problem's ``path`` and ``reason``
    always encode as UTF-8 (undecodable bytes are written ``\\xNN``).

    A file's ``doc_id`` is its path relative to the directory argument it was found under; for a
    file given directly it is the file's name. A file reached twice is yielded once; two
    different files that would share a ``doc_id`` (``a/x.txt`` and ``b/x.txt`` given as ``a``
    and ``b``) are reported, since one would overwrite the other in the index.

    Args:
        paths: Files and directories, in the order to process them.

    Yields:
        A :class:`FileRef` per supported, readable file; a :class:`DiscoveryProblem` per path
        that does not exist, cannot be read, is of an unsupported type, is not valid UTF-8, or
        is a symlink loop.

    Example:
        >>> for item in discover([Path("docs")]):  # doctest: +SKIP
        ...     print(item.doc_id if isinstance(item, FileRef) else item.reason)
    """
    for item in _discover(paths):
        yield _encodable(item) if isinstance(item, DiscoveryProblem) else item


def _discover(paths: Sequence[Path]) -> Iterator[FileRef | DiscoveryProblem]:
    visited: set[_Key] = set()
    id_owner: dict[str, Path] = {}
    yielded: set[Path] = set()
    for raw in paths:
        given = Path(os.path.abspath(raw))
        if _not_utf8(given) and given.is_dir():
            yield DiscoveryProblem(_printable(given), f"path is not valid UTF-8: {_RENAME_DIR}")
            continue
        try:
            st = os.stat(given)
        except OSError as exc:
            yield _stat_problem(given, exc)
            continue
        found: Iterator[FileRef | DiscoveryProblem]
        if stat.S_ISDIR(st.st_mode):
            found = _walk(given, st, visited)
        else:
            found = iter([_file(given, given.parent, st)])
        for item in found:
            if isinstance(item, FileRef):
                if item.path in yielded:
                    continue
                owner = id_owner.get(item.doc_id)
                if owner is not None:
                    yield DiscoveryProblem(
                        str(item.path),
                        f"doc id {item.doc_id!r} is already used by {owner}; "
                        "ingest a common parent directory instead",
                    )
                    continue
                id_owner[item.doc_id] = item.path
                yielded.add(item.path)
            yield item


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in a streaming fashion.

    Args:
        path: The file.

    Returns:
        The 64-character lower-case hex digest.

    Raises:
        LoadError: If the file cannot be read.
    """
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise LoadError(str(path), f"cannot read file: {exc.strerror or exc}") from exc
