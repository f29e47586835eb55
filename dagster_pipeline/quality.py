"""Offline quality of the current configuration, on the pipeline's own data (issue 6).

``recommendation_quality`` (downstream of ``recommendation_scores``) reads the positive
interactions of the last ``lookback_days`` from PostgreSQL (``feedrank.datasets.load_database``),
holds out each user's most recent day (``HOLDOUT_DAYS``, counted back from that user's latest
interaction), scores the rest with the run's configuration (the ``scoring`` resource, the one the
run's scores are built with) and records NDCG@10, Recall@10, precision@10, coverage@10, the number
of users evaluated, the duration and the NDCG/Recall@k chart
(``feedrank.protocol.recommendation_quality``; see docs/evaluation.md, last section).

``ndcg_not_dropped`` (non-blocking) warns when NDCG@10 fell more than 10% below the previous
materialization's; the first materialization passes.
"""

import base64
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from feedrank import protocol
from feedrank.datasets import load_database
from feedrank.evaluate import write_chart

from dagster_pipeline.resources import PostgresResource, ScoringResource

QUALITY = dg.AssetKey("recommendation_quality")
HOLDOUT_DAYS = 1.0
NDCG_KEY = "ndcg@10"
NDCG_TOLERANCE = 0.1


def ndcg_dropped(previous: float | None, current: float, tolerance: float = NDCG_TOLERANCE) -> bool:
    """Whether ``current`` NDCG is more than ``tolerance`` (a fraction) below ``previous``.
    No previous value (first materialization): False."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance: must be in [0, 1), got {tolerance}")
    if previous is None:
        return False
    return current < (1.0 - tolerance) * previous


def chart_markdown(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def quality(scoring: ScoringResource, postgres: PostgresResource) -> dg.MaterializeResult:
    t0 = time.perf_counter()
    cfg = scoring.scoring_config
    try:
        data = load_database(postgres.database_url, since_days=float(cfg["lookback_days"]))
        m = protocol.recommendation_quality(data, cfg, holdout_days=HOLDOUT_DAYS)
        with tempfile.TemporaryDirectory(prefix="feedrank_quality_") as tmp:
            chart = Path(tmp) / "recommendation_quality.png"
            write_chart(m["report"], chart)
            png = chart.read_bytes()
    except ValueError as e:  # no interactions, or no user with history on both sides
        raise dg.Failure(description=f"recommendation_quality: {e}", allow_retries=False) from None
    return dg.MaterializeResult(
        metadata={
            NDCG_KEY: dg.MetadataValue.float(m["ndcg@10"]),
            "recall@10": dg.MetadataValue.float(m["recall@10"]),
            "precision@10": dg.MetadataValue.float(m["precision@10"]),
            "coverage@10": dg.MetadataValue.float(m["coverage@10"]),
            "users_evaluated": dg.MetadataValue.int(int(m["users"])),
            "holdout_days": dg.MetadataValue.float(HOLDOUT_DAYS),
            "interactions_read": dg.MetadataValue.int(int(data.users.size)),
            "collaborative": dg.MetadataValue.text(str(cfg["collaborative"])),
            "weights": dg.MetadataValue.json(dict(cfg["weights"])),
            "duration_seconds": dg.MetadataValue.float(round(time.perf_counter() - t0, 3)),
            "chart": dg.MetadataValue.md(chart_markdown(png, "NDCG@k and Recall@k")),
        },
    )


def build_quality_asset(shards: dg.PartitionsDefinition | None = None) -> dg.AssetsDefinition:
    """Unpartitioned in both layouts (it evaluates the whole user base); with user shards it gets
    the single-run backfill policy the other unpartitioned assets have, so that one run covers it
    together with a range of shards."""
    return dg.asset(
        name="recommendation_quality",
        deps=["recommendation_scores"],
        description=f"Offline quality of the current configuration: each user's most recent "
        f"{HOLDOUT_DAYS:g} day(s) of interactions held out, the rest scored (feedrank.protocol."
        "recommendation_quality); NDCG@10, Recall@10, precision@10, coverage@10 and the chart.",
        kinds={"rust", "postgres"},
        backfill_policy=dg.BackfillPolicy.single_run() if shards is not None else None,
    )(quality)


def _ndcg_of(record) -> float | None:
    materialization = record.asset_materialization
    value = (materialization.metadata or {}).get(NDCG_KEY) if materialization else None
    return None if value is None else float(value.value)


@dg.asset_check(
    asset=QUALITY,
    blocking=False,
    description=f"Warns when NDCG@10 is more than {NDCG_TOLERANCE:.0%} below the previous "
    "materialization's (the first materialization passes).",
)
def ndcg_not_dropped(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    records = context.instance.fetch_materializations(QUALITY, limit=2).records
    if not records or _ndcg_of(records[0]) is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"error": f"no materialization of recommendation_quality with {NDCG_KEY}"},
        )
    current = _ndcg_of(records[0])
    previous = _ndcg_of(records[1]) if len(records) > 1 else None
    dropped = ndcg_dropped(previous, current)
    metadata: dict[str, Any] = {"current_ndcg@10": dg.MetadataValue.float(current)}
    if previous is not None:
        metadata["previous_ndcg@10"] = dg.MetadataValue.float(previous)
        if previous > 0:
            metadata["relative_change"] = dg.MetadataValue.float(round(current / previous - 1.0, 4))
    return dg.AssetCheckResult(
        passed=not dropped, severity=dg.AssetCheckSeverity.WARN, metadata=metadata
    )


QUALITY_CHECKS = [ndcg_not_dropped]
