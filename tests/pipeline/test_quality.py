"""recommendation_quality (issue 6, "In the pipeline"): the asset evaluates the current
configuration on the pipeline's own data and records the figures and the chart; its check passes
on the first materialization and warns (without failing the run) when NDCG@10 fell more than 10%
below the previous materialization's."""

import dagster as dg
import pytest

from graph_runs import run_failure

from dagster_pipeline.assets import build_assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.partitions import user_shards
from dagster_pipeline.quality import QUALITY, QUALITY_CHECKS, build_quality_asset, ndcg_dropped
from dagster_pipeline.resources import ScoringResource
from dagster_pipeline.schedules import all_shards_tags


@pytest.mark.fast
def test_ndcg_dropped_is_a_relative_drop_of_more_than_the_tolerance():
    assert not ndcg_dropped(None, 0.01)  # first materialization
    assert not ndcg_dropped(0.20, 0.20)
    assert not ndcg_dropped(0.20, 0.25)  # improvement
    assert not ndcg_dropped(0.20, 0.181)  # -9.5%
    assert ndcg_dropped(0.20, 0.179)  # -10.5%
    assert ndcg_dropped(0.20, 0.0)
    assert not ndcg_dropped(0.20, 0.17, tolerance=0.2)
    assert ndcg_dropped(0.20, 0.17, tolerance=0.1)
    assert not ndcg_dropped(0.0, 0.0)
    with pytest.raises(ValueError, match="tolerance"):
        ndcg_dropped(0.2, 0.1, tolerance=1.5)


def _check_result(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    evals = [e for e in result.get_asset_check_evaluations() if e.asset_key == QUALITY]
    assert len(evals) == 1, evals
    return evals[0]


def _quality_metadata(result: dg.ExecuteInProcessResult) -> dict:
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == QUALITY]
    assert len(mats) == 1
    return mats[0].materialization.metadata


WEIGHTS = {"collaborative": 0.5, "content": 0.3, "recency": 0.1, "engagement": 0.1}


def test_quality_is_recorded_and_the_check_warns_on_a_drop(pipeline_resources, demo_db):
    """One full run, then the quality asset alone in runs of its own (same configuration)."""
    instance = dg.DagsterInstance.ephemeral()
    graph = [*build_assets(None), *ALL_CHECKS, build_quality_asset(None), *QUALITY_CHECKS]
    resources = {**pipeline_resources, "scoring": ScoringResource(overrides={"weights": WEIGHTS})}
    first = dg.materialize(graph, resources=resources, instance=instance)
    assert first.success
    md = _quality_metadata(first)
    assert md["weights"].value == WEIGHTS  # the configuration the scores were built with
    ndcg = md["ndcg@10"].value
    assert 0.0 < ndcg <= 1.0  # planted topics: the hybrid finds some held-out posts
    for key in ("recall@10", "precision@10", "coverage@10"):
        assert 0.0 <= md[key].value <= 1.0, key
    assert md["recall@10"].value > 0
    assert md["users_evaluated"].value > 0
    assert md["duration_seconds"].value > 0
    chart = md["chart"].value
    assert chart.startswith("![") and "data:image/png;base64,iVBORw0KGgo" in chart  # a PNG
    check = _check_result(first)
    assert check.passed  # first materialization: nothing to compare with
    assert "previous_ndcg@10" not in check.metadata

    # A previous materialization far better than this one: the next one must warn.
    better = min(1.0, ndcg * 2 + 0.1)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(QUALITY, metadata={"ndcg@10": better})
    )
    second = dg.materialize(graph, resources=resources, instance=instance, selection=[QUALITY])
    assert second.success  # non-blocking: the run goes on
    again = _quality_metadata(second)["ndcg@10"].value
    assert again == pytest.approx(ndcg)  # same data, same config: deterministic
    check = _check_result(second)
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["previous_ndcg@10"].value == pytest.approx(better)

    # Same figure as the previous materialization: passes.
    third = dg.materialize(graph, resources=resources, instance=instance, selection=[QUALITY])
    assert _check_result(third).passed
    assert _check_result(third).metadata["previous_ndcg@10"].value == pytest.approx(ndcg)


def test_a_bad_quality_config_fails_naming_the_field(pipeline_resources, demo_db):
    result = dg.materialize(
        [build_quality_asset(None), *QUALITY_CHECKS],
        resources={**pipeline_resources, "scoring": ScoringResource(overrides={"neighbors": 0})},
        raise_on_error=False,
    )
    assert not result.success
    assert "neighbors" in run_failure(result)


def test_quality_runs_with_user_shards(pipeline_resources, demo_db):
    """With FEEDRANK_USER_SHARDS the asset stays unpartitioned and runs in the run that covers
    every shard (the schedule's run)."""
    shards = user_shards(3)
    result = dg.materialize(
        [*build_assets(shards), *ALL_CHECKS, build_quality_asset(shards), *QUALITY_CHECKS],
        resources=pipeline_resources,
        tags=all_shards_tags(shards),
    )
    assert result.success
    md = _quality_metadata(result)
    assert 0.0 < md["ndcg@10"].value <= 1.0 and md["users_evaluated"].value > 0
    assert _check_result(result).passed
