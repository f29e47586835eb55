"""The growth protocol of the scaling benchmarks (issue 17), in one place: a size is a number of
users, with posts and interactions growing with them (2x and 50x), and a time's growth exponent
between two sizes is the ``e`` of ``time ~ users^e``. ``make bench-pipeline GROWTH=...``
(dagster_pipeline/bench.py) and ``make bench-retrieval GROWTH=...`` (scripts/bench_retrieval.py)
both measure by it."""

from __future__ import annotations

import math

__all__ = ["POSTS_PER_USER", "INTERACTIONS_PER_USER", "size", "exponent"]

POSTS_PER_USER = 2
INTERACTIONS_PER_USER = 50


def size(users: int) -> tuple[int, int, int]:
    """(users, posts, interactions) of the size with ``users`` users."""
    return users, POSTS_PER_USER * users, INTERACTIONS_PER_USER * users


def exponent(users_a: int, seconds_a: float, users_b: int, seconds_b: float) -> float:
    """The growth exponent ``e`` of a time from size a to size b: ``seconds ~ users^e``."""
    return math.log(seconds_b / seconds_a) / math.log(users_b / users_a)
