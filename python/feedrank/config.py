"""ScoringConfig files: what ``feedrank tune`` writes and ``feedrank evaluate --config`` and the
pipeline's ``ScoringResource(config_path=...)`` read.

A file holds a (partial) ScoringConfig as a JSON object; :func:`load_config` reads it, lays
overrides over it and returns it validated and complete (``feedrank.validate_config``: the core's
defaults and checks, the only ones)::

    from feedrank.config import load_config
    cfg = load_config("feedrank-config.json", {"top_k": 50})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import feedrank

__all__ = ["load_config", "merge_config"]


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overrides`` laid over ``base`` (both partial ScoringConfigs), not validated: a nested dict
    (``weights``, ``interaction_weights``, ``retrieval``, ...) is merged key by key, any other
    value replaced."""
    merged = dict(base)
    for name, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    path_argument: str = "config",
) -> dict[str, Any]:
    """The ScoringConfig of the file at ``path`` (none: the defaults) with ``overrides`` on top; a
    nested dict (``weights``, ``retrieval``, ...) is merged key by key. Errors are
    ``ValueError``s that start with the bad field's name, or with ``path_argument`` for the file."""
    base: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"{path_argument}: cannot read {path}: {e.strerror}") from None
        try:
            base = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path_argument}: {path} is not JSON: {e}") from None
        if not isinstance(base, dict):
            raise ValueError(f"{path_argument}: {path} must hold a JSON object")
    return feedrank.validate_config(merge_config(base, overrides))
