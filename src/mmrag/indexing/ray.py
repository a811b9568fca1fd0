"""``mmrag ingest --engine ray``: loading and embedding on Ray Data; the writes stay in the driver.

The pipeline has two stages, both plain Ray Data operators, so Ray does the scheduling, the
back-pressure, the retries and the scale-out (no scheduler of mmrag's own):

1. **load** (CPU tasks, ``flat_map``): each planned file is hashed when needed, skipped when the
   manifest already has its version, else parsed and chunked (:func:`mmrag.indexing.steps.load_file`).
2. **embed** (an actor pool, ``map_batches``): each actor loads the models once, on a CPU or one
   GPU (fp16 there, checked against fp32), and embeds batches of documents
   (:func:`mmrag.indexing.steps.embed_documents`).

The driver (:class:`mmrag.indexing.Indexer`) plans the files from the manifest, and consumes the
stream in order: it alone writes the manifest, Chroma and the keyword index, with the same
pending -> records -> keyword rows -> done protocol as the local engine. Workers never open a
store. A killed driver therefore leaves what a killed local ingest leaves, and a rerun with either
engine ends in the same state. A killed actor is restarted by Ray and its batches are retried.

Files are read by the workers from their paths: on a multi-machine cluster every node must see
the ingested paths at the same place (a shared or network file system), and have mmrag installed.
Objects in object storage (``s3://bucket/prefix``, :mod:`mmrag.sources`) need no shared file
system: the dataset carries their URLs and storage options, never their bytes, and each load task
reads its objects from the store itself (each node needs ``mmrag[s3]`` and the credentials, from
its environment or the storage options).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from mmrag.chunking import ChunkSpec, SentenceChunker
from mmrag.errors import ConfigError, MissingDependencyError, MmragError
from mmrag.loaders import JsonlFields, LoaderLimits
from mmrag.indexing.steps import FileResult, FileTask, LoadedDoc, Prepared, embed_documents, load_file
from mmrag.registry import ModelChoice

if TYPE_CHECKING:
    from mmrag.indexing import Indexer

log = logging.getLogger(__name__)
#: The exact Ray this engine is built and tested against (the ``mmrag[ray]`` extra).
RAY_REQUIREMENT = "ray[data]==2.60.0"
#: Files per load task: enough to amortise a task's overhead, few enough to spread over the cores.
FILES_PER_TASK = 8
#: Documents per embedding call; the models batch their items again inside.
DOCS_PER_CALL = 16


class EngineError(MmragError):
    """The Ray cluster, or a worker on it, failed; the message says what to check."""

    code = "engine_error"
    status_code = 500


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine runs.

    Attributes:
        address: a cluster to join (``ray://head:10001``, ``head:6379``, ``auto``); ``None``
            starts a local Ray on this machine for the run and stops it after.
        embed_workers: embedding actors; default one per GPU under cuda, else one.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when the cluster has GPUs).
        batch_size: items per model batch; default the models' own (32 images, 64 chunks on a
            CPU), 256 on a GPU.
        num_cpus: cores of the local Ray (default all of this machine's).
        threads: torch threads per CPU actor (default: the node's cores shared among the actors
            of a local Ray; ``MMRAG_TORCH_THREADS`` on a cluster's nodes).
        dashboard: start Ray's dashboard (off unless asked for).
    """

    address: str | None = None
    embed_workers: int | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_cpus: int | None = None
    threads: int | None = None
    dashboard: bool = False


def import_ray() -> Any:
    """Import Ray, or say how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is what the engine needs
    except ImportError as exc:
        raise MissingDependencyError(
            f"--engine ray needs Ray Data: pip install 'mmrag[ray]' (installs {RAY_REQUIREMENT})"
        ) from exc
    return ray


class RayEngine:
    """Runs the load and embed stages on Ray Data (see the module docstring)."""

    name = "ray"

    def __init__(self, models: ModelChoice, options: RayOptions = RayOptions()) -> None:
        if options.device not in {"cpu", "cuda", "auto"}:
            raise ConfigError(f"Unknown device {options.device!r}. Known: cpu, cuda, auto")
        self.models = models
        self.options = options
        self.startup_seconds = 0.0
        self._workers: dict[str, float] = {}

    def describe(self) -> dict[str, float]:
        return dict(self._workers)

    # -- Ray --------------------------------------------------------------------------------------
    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; return whether this engine started it (and so stops it)."""
        if ray.is_initialized():
            return False
        o = self.options
        # Usage stats are off unless the user turned them on themselves.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not o.address:
            # Ray renices its workers to 15 by default; a local batch run is the job, not a guest.
            os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray's own chatter (start-up notes, deprecations, per-dataset stats) stays out of the CLI's
        # output; its errors still surface, translated, through the pipeline.
        kwargs: dict[str, Any] = {"include_dashboard": o.dashboard, "logging_level": logging.ERROR,
                                  "log_to_driver": False, "configure_logging": True}
        try:
            if o.address:
                ray.init(address=o.address, **kwargs)
            else:
                ray.init(num_cpus=o.num_cpus or os.cpu_count() or 1, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ValueError...
            where = f"the Ray cluster at {o.address}" if o.address else "a local Ray instance"
            raise EngineError(f"Could not start or join {where} ({type(exc).__name__}: {exc}). Check the address "
                              "(`ray status` on the head node), or drop --ray-address to start a local one.") from exc
        return True

    def _plan_workers(self, ray: Any) -> tuple[str, int, float, int]:
        """(device, actors, CPUs reserved per actor, torch threads per actor)."""
        o = self.options
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        device = o.device
        if device == "auto":
            device = "cuda" if gpus else "cpu"
        if device == "cuda" and not gpus:
            raise ConfigError("--device cuda, but the Ray cluster has no GPU (ray status lists its resources); "
                              "use --device cpu or auto")
        workers = o.embed_workers or (gpus if device == "cuda" else 1)
        if device == "cuda":
            return device, workers, 1.0, o.threads or 1
        # An actor pool that reserves every core starves the load tasks and the stream stalls:
        # reserve one core per actor, and leave the load tasks at least one.
        per_actor = 1.0 if cpus > workers else max(0.25, (cpus - 0.5) / workers)
        threads = o.threads or int(os.environ.get("MMRAG_TORCH_THREADS", "0")) or max(1, cpus // workers)
        return device, workers, per_actor, threads

    # -- the run ---------------------------------------------------------------------------------
    def run(self, tasks: Sequence[FileTask], indexer: "Indexer") -> Iterator[FileResult | Prepared]:
        ray = import_ray()
        started = time.monotonic()
        # Ray prints its workers' and raylet's notes (a worker died, a task is retried) on this
        # process's stdout, which `--json` keeps for the summary: send them to stderr meanwhile.
        with contextlib.redirect_stdout(sys.stderr):
            yield from self._run(ray, started, tasks, indexer)

    def _run(self, ray: Any, started: float, tasks: Sequence[FileTask], indexer: "Indexer"
             ) -> Iterator[FileResult | Prepared]:
        owned = self._connect(ray)
        try:
            device, workers, per_actor, threads = self._plan_workers(ray)
            resources = ray.cluster_resources()
            self._workers = {"embed": workers, "cpus": float(resources.get("CPU", 0)),
                             "gpus": float(resources.get("GPU", 0))}
            dataset = self._dataset(ray, tasks, indexer, device, workers, per_actor, threads)
            self.startup_seconds = time.monotonic() - started
            yield from self._consume(dataset, indexer)
        finally:
            if owned:
                ray.shutdown()

    def _dataset(self, ray: Any, tasks: Sequence[FileTask], indexer: "Indexer", device: str, workers: int,
                 per_actor: float, threads: int) -> Any:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI draws its own bar
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx.execution_options.preserve_order = True  # JSONL ids are claimed in discovery order
        groups = [tasks[lo:lo + FILES_PER_TASK] for lo in range(0, len(tasks), FILES_PER_TASK)]
        items = [{"tasks": pickle.dumps(g)} for g in groups]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(_load_rows, fn_kwargs={"chunk": indexer.kb.chunk_spec, "jsonl": indexer.jsonl,
                                                "limits": indexer.limits, "redactor": indexer.redactor},
                        num_cpus=1)
        o = self.options
        clip = self.models.clip
        batch = o.batch_size or (256 if device == "cuda" else None)
        if batch:
            clip = replace(clip, batch_size=batch)
        return ds.map_batches(
            _embed_actor(replace(self.models, clip=clip), device, batch, threads), batch_size=DOCS_PER_CALL,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=per_actor, num_gpus=1 if device == "cuda" else 0,
        )

    def _consume(self, dataset: Any, indexer: "Indexer") -> Iterator[FileResult | Prepared]:
        bound = False
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                columns = (batch.column(name).to_pylist() for name in ("kind", "blob", "identity"))
                for kind, blob, identity in zip(*columns):
                    item = pickle.loads(blob)
                    if kind == "doc" and not bound:
                        clip_identity, text_identity = pickle.loads(identity)
                        indexer.kb.bind_identities(clip=clip_identity, text=text_identity)
                        bound = True
                    yield item
        except MmragError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray wraps worker failures in its own exception types
            raise _translate(exc) from exc


def _translate(exc: BaseException) -> MmragError:
    """A worker's mmrag error (a model that did not load...) as itself; anything else as an EngineError."""
    cause: Any = exc
    for _ in range(8):  # Ray wraps a worker's exception (RayTaskError, UserCodeException...)
        if isinstance(cause, MmragError):
            return cause
        nxt = getattr(cause, "cause", None) or cause.__cause__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    lines = str(exc).strip().splitlines()
    return EngineError(f"The Ray pipeline failed: {type(exc).__name__}: {lines[-1] if lines else ''}")


# -- stage 1: load (a Ray task per group of files) ------------------------------------------------
@lru_cache(maxsize=4)
def _chunker(spec: ChunkSpec) -> SentenceChunker:
    return SentenceChunker(spec)  # built once per worker process and chunk spec


def _load_rows(row: dict[str, Any], *, chunk: ChunkSpec, jsonl: JsonlFields, limits: LoaderLimits,
               redactor: Any = None) -> Iterator[dict[str, Any]]:
    for task in pickle.loads(row["tasks"]):
        for item in load_file(task, _chunker(chunk), jsonl=jsonl, limits=limits, redactor=redactor):
            kind = "doc" if isinstance(item, LoadedDoc) else "file"
            yield {"kind": kind, "blob": pickle.dumps(item, protocol=5), "identity": b""}


# -- stage 2: embed (an actor pool; each actor loads the models once) -----------------------------
def _embed_actor(models: ModelChoice, device: str, text_batch: int | None, threads: int) -> type:
    """The actor class with its settings built in (constructor arguments would sit in Ray's object
    store, which an actor restart cannot count on: ray-project/ray#53727)."""

    class EmbedActor(_EmbedActor):
        def __init__(self) -> None:
            super().__init__(models, device, text_batch, threads)

    return EmbedActor


class _EmbedActor:
    """Embeds the documents of each batch; passes the files' results through untouched."""

    def __init__(self, models: ModelChoice, device: str, text_batch: int | None, threads: int) -> None:
        import torch

        from mmrag.registry import build_embedders

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.clip, self.text = build_embedders(models, device, text_batch=text_batch)
        self._identity = pickle.dumps((self.clip.identity(), self.text.identity()))

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        kinds, blobs = batch.column("kind").to_pylist(), batch.column("blob").to_pylist()
        prepared = iter(embed_documents([pickle.loads(b) for k, b in zip(kinds, blobs) if k == "doc"], self))
        out, ids = [], []
        for kind, blob in zip(kinds, blobs):
            if kind == "doc":
                out.append(pickle.dumps(next(prepared), protocol=5))
                ids.append(self._identity)
            else:
                out.append(blob)
                ids.append(b"")
        return pa.table({"kind": pa.array(kinds, pa.string()), "blob": pa.array(out, pa.large_binary()),
                         "identity": pa.array(ids, pa.binary())})
