"""The experiments a run applies (issue 14, part 3): the ``config`` arms' lists computed with each
arm's configuration.

The snapshot reads the experiments running at its time (:func:`running_experiments`, in the
snapshot's own transaction); the scoring step asks the core which arm applies to each of its
users (:func:`plan_arms`: ``feedrank.experiment_arms``, the rule the API serves with, so the two
cannot disagree) and scores the users of a ``config`` arm with the run's ScoringConfig and the
arm's override laid over it, one model per distinct arm configuration. Everyone else, a ``config``
arm of ``{}`` (a control) included, gets the run's lists. The run records what it applied in
``recommendation_runs.config.experiments`` (:attr:`ArmPlan.record`), which the API reads to say
whether a ``config`` arm shaped a page (``metadata.arms[].applied``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import feedrank
import numpy as np
import polars as pl
import psycopg
from feedrank.config import merge_config


def running_experiments(cur: psycopg.Cursor, at: float) -> list[dict[str, Any]]:
    """The definitions (the core's normalized JSON) of the experiments running at ``at`` (Unix
    seconds): started, not ended, not stopped by then; earliest start first. A stored definition
    the core no longer accepts (a field removed or restricted since it was created) stops the run
    here, before anything is written: ValueError naming the experiment and the field."""
    cur.execute(
        "SELECT name, definition FROM experiments "
        "WHERE starts_at <= to_timestamp(%s) AND (ends_at IS NULL OR ends_at > to_timestamp(%s)) "
        "AND (stopped_at IS NULL OR stopped_at > to_timestamp(%s)) ORDER BY starts_at, name",
        (at, at, at),
    )
    running = []
    for name, definition in cur.fetchall():
        try:
            running.append(feedrank.validate_experiment(definition))
        except ValueError as e:
            raise ValueError(f"experiment {name!r}: its stored definition no longer validates: {e}") from None
    return running


def arm_config(run_config: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The ScoringConfig an arm's users are scored with: ``override`` laid over the run's (a
    nested dict such as ``weights`` merged key by key, as the run's own overrides are)."""
    return feedrank.validate_config(merge_config(run_config, override))


@dataclass
class ArmPlan:
    """Which configuration each user of a set is scored with."""

    configs: list[dict[str, Any]]
    """``configs[0]`` is the run's; then one per distinct configuration of an applied arm."""
    config_of: np.ndarray
    """Each user's index into ``configs`` (int32, aligned with the users planned)."""
    labels: list[list[str]] = field(default_factory=list)
    """Each config's ``experiment:arm`` names (several arms may share one configuration)."""
    record: dict[str, Any] = field(default_factory=dict)
    """What the run applied, for ``recommendation_runs.config.experiments``: every experiment
    running at the snapshot, ``{name: {"definition": ..., "arms": {arm: resolved config}}}`` (the
    ``config`` arms that change the feed; empty when none runs)."""

    @property
    def top_k(self) -> int:
        """The widest list any of the configurations asks for (the arrays' width)."""
        return max(int(c["top_k"]) for c in self.configs)


def plan_arms(experiments: list[dict[str, Any]], run_config: dict[str, Any], user_ids: pl.Series) -> ArmPlan:
    """The plan for the users ``user_ids`` (their ids as text) under the ``experiments`` running
    at the snapshot. Without a ``config`` arm that changes the feed it is the run's configuration
    for everyone, and nothing is asked of the core per user."""
    record: dict[str, Any] = {}
    resolved: list[dict[str, dict[str, Any]]] = []
    for e in experiments:
        arms = {
            a["name"]: arm_config(run_config, a["config"])
            for a in e["arms"]
            if a["kind"] == "config" and a["config"]
        }
        resolved.append(arms)
        record[e["name"]] = {"definition": e, "arms": arms}
    configs, labels = [run_config], [[]]
    config_of = np.zeros(len(user_ids), np.int32)
    if not any(resolved):
        return ArmPlan(configs, config_of, labels, record)
    table = feedrank.experiment_arms(experiments, user_ids.to_list())
    arms, applied = table["arms"], table["applied"]
    # a configuration's JSON -> its index in configs (an arm that resolves to the run's own
    # configuration is scored by the run's model)
    slot = {json.dumps(run_config, sort_keys=True): 0}
    for i, (e, arm_configs) in enumerate(zip(experiments, resolved)):
        for j, a in enumerate(e["arms"]):
            cfg = arm_configs.get(a["name"])
            if cfg is None:
                continue
            users = (applied == i) & (arms[:, i] == j)
            if not users.any():
                continue
            key = json.dumps(cfg, sort_keys=True)
            if key not in slot:
                slot[key] = len(configs)
                configs.append(cfg)
                labels.append([])
            config_of[users] = slot[key]
            labels[slot[key]].append(f"{e['name']}:{a['name']}")
    return ArmPlan(configs, config_of, labels, record)
