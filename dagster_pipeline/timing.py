"""Where an asset's time went, for its metadata: each named step has a kind, and whatever the
steps do not cover is Python glue (the benchmark's "glue < 10 %" target is read from this)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

KINDS = ("rust", "native", "io")


class Timer:
    """Durations of the named steps of one asset.

    Each step has a kind: ``rust`` (feedrank kernels), ``native`` (polars / numpy / scipy
    vectorized calls), ``io`` (PostgreSQL and Redis round trips). Whatever the steps do not cover
    is Python glue (the interpreter, Dagster's bookkeeping, loops over users).
    """

    def __init__(self) -> None:
        self.steps: dict[str, tuple[str, float]] = {}
        self._t0 = time.perf_counter()

    def add(self, name: str, kind: str, seconds: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
        prev = self.steps.get(name, (kind, 0.0))[1]
        self.steps[name] = (kind, prev + seconds)

    @contextmanager
    def step(self, name: str, kind: str = "native") -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, kind, time.perf_counter() - t)

    def merge_overlapping(self, timers: list["Timer"], wall: float) -> None:
        """Adds the steps of ``timers`` that ran at the same time (threads) over ``wall`` seconds:
        each step gets its share of the wall time, so the kinds still add up to the asset's time."""
        busy: dict[str, tuple[str, float]] = {}
        for timer in timers:
            for name, (kind, secs) in timer.steps.items():
                busy[name] = (kind, busy.get(name, (kind, 0.0))[1] + secs)
        total_busy = sum(secs for _, secs in busy.values()) or 1.0
        for name, (kind, secs) in busy.items():
            self.add(name, kind, wall * secs / total_busy)

    def total(self) -> float:
        return time.perf_counter() - self._t0

    def by_kind(self) -> dict[str, float]:
        out = {k: 0.0 for k in KINDS}
        for kind, secs in self.steps.values():
            out[kind] += secs
        out["glue"] = max(self.total() - sum(out.values()), 0.0)
        return {k: round(v, 3) for k, v in out.items()}

    def metadata(self) -> dict[str, Any]:
        rows = "\n".join(f"| {k} | {kind} | {v:.3f} |" for k, (kind, v) in self.steps.items())
        return {
            "duration_seconds": dg.MetadataValue.float(round(self.total(), 3)),
            "seconds_by_kind": dg.MetadataValue.json(self.by_kind()),
            "step_durations": dg.MetadataValue.md(
                f"| step | kind | seconds |\n|---|---|---|\n{rows}"
            ),
        }
