"""Shared pieces of the command line: the ``main`` group, common options, settings, error mapping.

Exit status: 0 success; 1 error; 2 usage error (an unknown collection included); 3 ingest finished
but some files failed (each is listed with its reason).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from mmrag.config import Settings
from mmrag.errors import MmragError
from mmrag.logs import configure_logging

EXIT_PARTIAL = 3


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command takes; each also reads its MMRAG_* environment variable."""
    options = [
        click.option("--data-dir", type=click.Path(path_type=Path), envvar="MMRAG_DATA_DIR", default=None,
                     help="Where all state lives (store, manifest, keyword index). [env MMRAG_DATA_DIR; default ./.mmrag]"),
        click.option("--profile", type=click.Choice(["default", "offline"]), envvar="MMRAG_PROFILE", default=None,
                     help="Model profile: default (ViT-B-32 laion2b + all-MiniLM-L6-v2, downloaded once) or offline "
                          "(bundled models, no network). [env MMRAG_PROFILE]"),
        click.option("--collection", envvar="MMRAG_COLLECTION", default=None, help="Knowledge base name. [default: default]"),
        click.option("--clip-model", envvar="MMRAG_CLIP__MODEL", default=None, help="Any open_clip architecture, e.g. ViT-B-16."),
        click.option("--clip-pretrained", envvar="MMRAG_CLIP__PRETRAINED", default=None,
                     help="open_clip pretrained tag or a local checkpoint path."),
        click.option("--random-weights", is_flag=True, envvar="MMRAG_CLIP__RANDOM_WEIGHTS",
                     help="Allow --clip-model without --clip-pretrained: a randomly initialised CLIP "
                          "(benchmarks only)."),
        click.option("--text-model", envvar="MMRAG_TEXT__MODEL", default=None,
                     help="sentence-transformers model name or local folder."),
        click.option("--store-url", envvar="MMRAG_STORE__URL", default=None,
                     help="Chroma server URL (http://host:port) instead of the embedded store."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class UsageFailure(click.ClickException):
    """A mistake in the command line that is not click's to see (an unknown collection): exit status 2."""

    exit_code = 2


def settings_from(opts: dict[str, Any]) -> Settings:
    """Build settings: environment first, then explicit options.

    Raises:
        UsageFailure: ``--clip-model`` names an architecture without ``--clip-pretrained`` weights
            (and no ``--random-weights``).
    """
    s = Settings()
    if opts.get("data_dir"):
        s.data_dir = opts["data_dir"]
    if opts.get("profile"):
        s.profile = opts["profile"]
    if opts.get("collection"):
        s.collection = opts["collection"]
    if opts.get("clip_model"):
        s.clip.model = opts["clip_model"]
    if opts.get("clip_pretrained"):
        s.clip.pretrained = opts["clip_pretrained"]
    if opts.get("text_model"):
        s.text.model = opts["text_model"]
    if opts.get("store_url"):
        s.store.url = opts["store_url"]
    if opts.get("device"):
        s.clip.device = opts["device"]
    if opts.get("batch_size"):
        s.clip.batch_size = opts["batch_size"]
    # Only commands with the model options carry "random_weights"; `mmrag keys` never loads a model.
    if "random_weights" in opts and s.clip.model and not s.clip.pretrained and not opts["random_weights"]:
        raise UsageFailure(
            f"--clip-model {s.clip.model} has no weights: pass --clip-pretrained (an open_clip tag such as "
            "laion2b_s34b_b79k, or a local checkpoint file), or --random-weights to build on a randomly "
            "initialised CLIP on purpose (benchmarks only; its search results are meaningless)")
    if s.profile == "offline":
        # Belt and braces: the offline profile must never reach a hub, even by a library default.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return s


def open_kb(opts: dict[str, Any], name: str | None = None, *, chunk: Any = None, embedders: Any = None,
            create: bool = False) -> Any:
    """The knowledge base the options name, aliases resolved: ``kb`` opens its live version, ``kb@N`` version N.

    A version built with its own chunk size (``mmrag reindex --chunk-size``) keeps it for later writes.
    ``embedders``: another knowledge base whose models this one shares (loaded once, not per version).
    ``create``: the command writes (ingest), so a new name is made; every other command refuses an
    unknown name before anything is opened or created (see :func:`require_collection`).

    Raises:
        UsageFailure: the collection does not exist and ``create`` is False.
    """
    from mmrag.chunking import ChunkSpec
    from mmrag.kb import KnowledgeBase
    from mmrag.lifecycle.versions import Versions
    from mmrag.manifest import Manifest
    from mmrag.registry import resolve_models

    s = settings_from(opts)
    name = name or s.collection
    if not create:
        require_collection(s, name)
    physical, configured = name, ChunkSpec(s.chunk.size, s.chunk.overlap)
    manifest_path = Path(s.data_dir) / "manifest.sqlite3"
    if manifest_path.exists():
        manifest = Manifest(manifest_path)
        try:
            versions = Versions(manifest)
            physical = versions.resolve(name)
            chunk = chunk or versions.chunk_spec(physical, configured)
        finally:
            manifest.close()
    chunk = chunk or configured
    shared = {"clip": embedders.clip, "text": embedders.text} if embedders is not None else {}
    return KnowledgeBase(s.data_dir, physical, resolve_models(s), store_url=s.store.url,
                         lock_timeout=s.store.lock_timeout, store_timeout=s.store.timeout, chunk=chunk, **shared)


def known_collections(data_dir: Path) -> list[str]:
    """The knowledge bases ``data_dir`` holds (versions folded into their name); creates nothing.

    The manifest records every collection: no manifest file means no collection, and it is not
    created to find that out.
    """
    from mmrag.lifecycle.versions import Versions
    from mmrag.manifest import Manifest

    path = Path(data_dir) / "manifest.sqlite3"
    if not path.is_file():
        return []
    manifest = Manifest(path)
    try:
        return Versions(manifest).knowledge_bases(manifest.collections())
    finally:
        manifest.close()


def require_collection(s: Settings, name: str) -> None:
    """Refuse a collection (``kb`` or ``kb@N``) that ``s.data_dir`` does not hold, naming the ones it does.

    Reads the manifest only when it exists; opens no store and creates no file or folder, so a
    mistyped ``--collection`` leaves nothing behind.

    Raises:
        InvalidInputError: the name is not a valid collection name.
        UsageFailure: no such collection (or version) in the data dir.
    """
    from mmrag.errors import NotFoundError
    from mmrag.lifecycle.versions import Versions, split_label
    from mmrag.manifest import Manifest
    from mmrag.registry import check_collection_name

    check_collection_name(split_label(name)[0])
    path = Path(s.data_dir) / "manifest.sqlite3"
    problem = ""
    if path.is_file():
        manifest = Manifest(path)
        try:
            versions = Versions(manifest)
            try:
                physical = versions.resolve(name)
            except NotFoundError as exc:
                problem = str(exc)
            else:
                # A version being built has no documents yet, but its versions row makes it known.
                if manifest.has_collection(physical) or versions.owner(physical) is not None:
                    return
        finally:
            manifest.close()
    known = known_collections(s.data_dir)
    listed = f". Known: {', '.join(known)}" if known else "; it holds no collection yet"
    kb = split_label(name)[0]
    if problem and kb in known:  # kb@N of a knowledge base that exists: its versions are the way out
        raise UsageFailure(problem + listed)
    raise UsageFailure(f"no collection {kb!r} in {s.data_dir}{listed}. Pass --collection NAME, or create "
                       f"{kb!r} with `mmrag ingest PATH --collection {kb}`")


def errors_to_click(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MmragError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmrag")
def main() -> None:
    """mmrag: multimodal retrieval-augmented generation over documents and images."""
    configure_logging()
