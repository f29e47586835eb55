"""The pipeline's job: the whole graph (and its checks)."""

from __future__ import annotations

import dagster as dg

build_recommendations = dg.define_asset_job(
    "build_recommendations",
    selection=dg.AssetSelection.all(),
    description="Snapshot, features, scores and the swap-in of everyone's recommendations. "
    "Partitioned by user shard: one run can cover one shard or a range (the schedule runs "
    "all of them in one run).",
)
