"""Run configuration of the pipeline.

Every asset takes the same :class:`RecommendationConfig`. Its scoring fields mirror
``ScoringConfig`` (rust/core/src/config.rs), whose defaults and validation are the only ones:
a field left ``None`` takes its value from ``config_path`` (a JSON file written by
``feedrank tune``) when one is given, else the ScoringConfig default; the merged result goes
through ``feedrank.validate_config``, which names the bad field. ``batch_size`` is the
pipeline's own (how many users go to one ``hybrid_topk`` call).

Each asset validates the config of *every* asset of its run before it does anything
(:func:`resolve_run`), so a bad value anywhere in the run stops the run in its first step, before
any database read.
"""


import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
import feedrank
from pydantic import Field

# Fields of RecommendationConfig that are ScoringConfig fields (same names, same JSON shape).
SCORING_FIELDS = (
    "weights",
    "interaction_weights",
    "collaborative",
    "weighting",
    "recency_tau_days",
    "neighbors",
    "ridge_l2",
    "history_half_life",
    "top_k",
    "lookback_days",
    "cache_ttl_seconds",
    "expires_after_hours",
)


class RecommendationConfig(dg.Config):
    """Run config shared by the pipeline's assets. Unset fields: config file, then defaults."""

    config_path: str | None = Field(
        default=None,
        description="A ScoringConfig JSON file (e.g. written by `feedrank tune`); its values are "
        "used for every field not set here.",
    )
    batch_size: int = Field(default=1000, description="Users per hybrid_topk call.")
    weights: dict[str, float] | None = Field(
        default=None,
        description="Hybrid weights {collaborative, content, recency, engagement}; default "
        "0.4/0.3/0.2/0.1. Finite, >= 0, not all zero.",
    )
    interaction_weights: dict[str, float] | None = Field(
        default=None,
        description="Weight per interaction type {view, click, like, share, hide}; default "
        "1/2/4/6/0.",
    )
    collaborative: str | None = Field(
        default=None, description="user_user (default) | item_item | ridge"
    )
    weighting: str | None = Field(
        default=None, description="Interaction weighting for similarities: none|binary|tfidf|bm25"
    )
    recency_tau_days: float | None = Field(default=None, description="recency = exp(-age/tau); 30")
    neighbors: int | None = Field(default=None, description="Nearest users/items kept; 50")
    ridge_l2: float | None = Field(default=None, description="Ridge penalty (collaborative=ridge)")
    history_half_life: float | None = Field(
        default=None,
        description="A user's n-th most recent interaction weighs 0.5^(n/half_life); 0 = all equal",
    )
    top_k: int | None = Field(default=None, description="Recommendations kept per user; 200")
    lookback_days: int | None = Field(default=None, description="Interactions read; 30 days")
    cache_ttl_seconds: int | None = Field(default=None, description="Redis entry TTL; 3600")
    expires_after_hours: int | None = Field(
        default=None, description="Rows of user_recommendations expire after; 48"
    )

    def resolve(self) -> dict[str, Any]:
        """The validated ScoringConfig (as a dict) plus ``batch_size``."""
        base: dict[str, Any] = {}
        if self.config_path:
            path = Path(self.config_path)
            try:
                base = json.loads(path.read_text())
            except OSError as e:
                raise ValueError(f"config_path: cannot read {path}: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"config_path: {path} is not JSON: {e}") from None
            if not isinstance(base, dict):
                raise ValueError(f"config_path: {path} must hold a JSON object")
        merged = dict(base)
        for name in SCORING_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
        # JSON cannot carry NaN/inf to the Rust side reliably; reject them here by name.
        for group in ("weights", "interaction_weights"):
            for key, w in (merged.get(group) or {}).items():
                if isinstance(w, float) and not math.isfinite(w):
                    raise ValueError(f"{group}: {key} weight must be finite and >= 0, got {w}")
        resolved = feedrank.validate_config(merged)
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        resolved["batch_size"] = self.batch_size
        return resolved


def resolve_run(context: dg.AssetExecutionContext, config: RecommendationConfig) -> dict[str, Any]:
    """Validates the config of every asset in this run (so that a bad value stops the run in its
    first step) and returns this asset's resolved config."""
    ops = (context.run.run_config or {}).get("ops", {}) or {}
    for name, section in ops.items():
        values = (section or {}).get("config")
        if not isinstance(values, dict):
            continue
        try:
            RecommendationConfig(**values).resolve()
        except ValueError as e:
            raise dg.Failure(
                description=f"run config of {name}: {e}",
                metadata={"asset": name, "error": str(e)},
                allow_retries=False,
            ) from None
    try:
        return config.resolve()
    except ValueError as e:
        raise dg.Failure(description=f"run config: {e}", allow_retries=False) from None


def run_config_for_all(assets: tuple[str, ...] | None = None, **fields: Any) -> dg.RunConfig:
    """The same RecommendationConfig for every asset of the pipeline, or for ``assets`` (the
    ones a run selects)."""
    from dagster_pipeline.assets import ASSET_NAMES

    cfg = RecommendationConfig(**fields)
    return dg.RunConfig(ops={name: cfg for name in (assets or ASSET_NAMES)})
