import json
import os
from pathlib import Path

import pytest

from mmrag.errors import InvalidInputError
from mmrag.evaluation import load_dataset, ndcg_at, precision_at, recall_at, reciprocal_rank

REL = frozenset({"a", "b"})


def test_rank_metrics_on_a_known_ranking() -> None:
    ranked = ["x", "a", "y", "b"]
    assert precision_at(ranked, REL, 2) == 0.5
    assert recall_at(ranked, REL, 4) == 1.0
    assert reciprocal_rank(ranked, REL) == 0.5
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    assert ndcg_at(ranked, REL, 10) == pytest.approx((0.6309298 + 0.4306766) / 1.6309298, rel=1e-6)


def test_perfect_and_empty_rankings() -> None:
    assert ndcg_at(["a", "b"], REL) == 1.0
    assert ndcg_at([], REL) == 0.0
    assert reciprocal_rank(["z"], REL) == 0.0


def test_dataset_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": 1, "query": "q", "relevant": ["a"]}) + "\n" + json.dumps({"id": 2, "relevant": ["a"]}) + "\n")
    with pytest.raises(InvalidInputError, match=r"d.jsonl: line 2: needs a 'query'"):
        load_dataset(path)


def test_dataset_image_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "q", "query_image": "img/x.png", "relevant": ["a"]}) + "\n")
    (q,) = load_dataset(path)
    assert q.image == os.path.abspath(tmp_path / "img" / "x.png")
