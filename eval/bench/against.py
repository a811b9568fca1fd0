"""Run one benchmark on this checkout and on another commit, alternately, and print the ratios.

A refactor's promise is "no regression beyond noise". A figure from another day, or another
session's CPU, cannot show that, so this runs the same bench on both trees in one sitting,
interleaved (base, head, head, base, ...), so drift in the machine's load falls on both sides. Each
side runs its own copy of the bench script with its own ``src`` first on the path, in the shared
virtual environment.

Noise is shown, not assumed: each figure's spread over the reps of one side is printed beside the
ratio, and a ratio is flagged only when the two sides' runs do not overlap and their medians differ
by more than 2%.

Example::

    python eval/bench/against.py --base 8a4352a --reps 2 -- query.py --chunks 10000 --no-load --no-rerank

Run it alone on the machine (two benchmarks at once slow each other many times over).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
#: A difference of medians below this share is never flagged, however steady the runs.
MIN_CHANGE = 0.02
sys.path.insert(0, str(ROOT))

from eval.bench.machine import cpu_line  # noqa: E402  (the repo root is put on the path first)


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf of a JSON value, as (dotted.path, number); lists by index."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{prefix}[{i}]")


def worktree(rev: str, parent: Path) -> Path:
    """A detached checkout of ``rev`` under ``parent`` (removed by :func:`drop_worktree`).

    Benches that read real data find it at ``../shared`` beside the checkout, as in this one's, so
    ``parent/shared`` links to this checkout's ``../shared`` when there is one.
    """
    path = parent / rev.replace("/", "_")[:40]
    parent.mkdir(parents=True, exist_ok=True)
    shared = ROOT.parent / "shared"
    if shared.is_dir() and not (parent / "shared").exists():
        (parent / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), rev], check=True)
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def run_side(tree: Path, bench: list[str], out: Path, timeout: float) -> dict[str, float]:
    """Run ``bench`` from ``tree`` with its results written to ``out``; its numeric leaves."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}", "PYTHONUNBUFFERED": "1"}
    script = tree / "eval" / "bench" / bench[0]
    cmd = [sys.executable, str(script), *bench[1:], "--json", str(out)]
    print(f"$ (cd {tree} && {' '.join(cmd[1:])})", flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=tree, env=env, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"the bench failed in {tree} (exit {done.returncode}); its output is above")
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    return dict(leaves(json.loads(out.read_text())))


def compare(base: list[dict[str, float]], head: list[dict[str, float]], keys: list[str]) -> list[dict[str, Any]]:
    """Per figure both sides report: medians, spreads, head/base ratio, and whether it is outside the noise."""
    rows = []
    common = set.intersection(*(set(r) for r in base + head))
    for key in sorted(common):
        if keys and not any(k in key for k in keys):
            continue
        b, h = [r[key] for r in base], [r[key] for r in head]
        mb, mh = statistics.median(b), statistics.median(h)
        if mb == 0:
            continue
        lo, hi = min(b + h), max(b + h)  # the figure's range over every run
        spread = max((max(b) - min(b)) / abs(mb), (max(h) - min(h)) / abs(mh) if mh else 0.0)
        # Outside the noise: the two sides' runs do not overlap, and the medians differ by more than
        # MIN_CHANGE (a 1 MiB RSS difference between runs that never vary is not a regression).
        apart = (max(b) < min(h) or max(h) < min(b)) and abs(mh / mb - 1) > MIN_CHANGE
        rows.append({"figure": key, "base": mb, "head": mh, "ratio": mh / mb, "spread": spread,
                     "range": [lo, hi], "separated": apart})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Everything after -- is the bench: a script in eval/bench and its arguments "
                                            "(--json is added).")
    parser.add_argument("--base", required=True, help="the commit to compare with (any git revision)")
    parser.add_argument("--head", help="the commit compared (default: this checkout, as it is on disk)")
    parser.add_argument("--reps", type=int, default=2, help="runs per side, interleaved (>= 2 shows the noise)")
    parser.add_argument("--keys", default="", help="comma-separated substrings: only figures whose path holds one")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one bench run may take")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument("bench", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench or not (ROOT / "eval" / "bench" / bench[0]).is_file():
        parser.error("name a bench script of eval/bench after --, e.g. -- query.py --chunks 10000")
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    print(f"cpu: {cpu_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mmrag-against-") as tmp:
        trees = {"base": worktree(args.base, Path(tmp) / "base")}
        try:
            trees["head"] = worktree(args.head, Path(tmp) / "head") if args.head else ROOT
            runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
            for rep in range(args.reps):
                order = ("base", "head") if rep % 2 == 0 else ("head", "base")
                for side in order:
                    runs[side].append(run_side(trees[side], bench, Path(tmp) / f"{side}-{rep}.json", args.timeout))
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    drop_worktree(tree)
    keys = [k for k in args.keys.split(",") if k]
    rows = compare(runs["base"], runs["head"], keys)
    print(f"\n{'figure':60s} {'base':>12s} {'head':>12s} {'head/base':>9s} {'spread':>7s}")
    for row in rows:
        flag = "  <- outside the noise" if row["separated"] and args.reps > 1 else ""
        print(f"{row['figure'][:60]:60s} {row['base']:12.4g} {row['head']:12.4g} {row['ratio']:9.3f} "
              f"{row['spread']:7.1%}{flag}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"base": args.base, "head": args.head or "this checkout", "bench": bench, "reps": args.reps, "cpu": cpu_line(),
                                         "runs": runs, "figures": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
