"""Fixtures of the evaluation tests: MovieLens ml-latest-small from ../shared/data (read in place,
never copied into the repository) and its EVAL.md split, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feedrank import datasets, protocol

MOVIELENS = Path(
    os.environ.get(
        "FEEDRANK_MOVIELENS",
        Path(__file__).resolve().parents[2].parent / "shared" / "data" / "movielens-latest-small",
    )
)


@pytest.fixture(scope="session")
def movielens_path() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        pytest.fail(f"MovieLens ml-latest-small not found at {MOVIELENS} (set FEEDRANK_MOVIELENS)")
    return MOVIELENS


@pytest.fixture(scope="session")
def movielens(movielens_path: Path) -> datasets.Dataset:
    return datasets.load_movielens(movielens_path)


@pytest.fixture(scope="session")
def movielens_split(movielens: datasets.Dataset) -> protocol.Split:
    return protocol.temporal_split(movielens)
