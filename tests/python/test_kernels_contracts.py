"""The shared contracts through the binding: config defaults/validation, reasons, cache entries.

These protect the pipeline (writer) and the API (reader) from drifting apart: both call the same
Rust code, and these tests pin what the Python side sees of it.
"""

import json

import numpy as np
import pytest

import feedrank


def test_default_config_is_the_designs():
    cfg = feedrank.default_config()
    assert cfg["weights"] == pytest.approx(
        {"collaborative": 0.4, "content": 0.3, "recency": 0.2, "engagement": 0.1}
    )
    assert cfg["collaborative"] == "user_user"
    assert cfg["top_k"] == 200
    assert feedrank.validate_config({}) == cfg


def test_validate_config_fills_defaults_and_names_bad_fields():
    cfg = feedrank.validate_config({"top_k": 10, "weights": {"collaborative": 1.0}})
    assert cfg["top_k"] == 10
    assert cfg["neighbors"] == 50
    with pytest.raises(ValueError, match=r"^top_k: must be >= 1"):
        feedrank.validate_config({"top_k": 0})
    with pytest.raises(ValueError, match=r"^recency_tau_days:"):
        feedrank.validate_config({"recency_tau_days": -1.0})
    with pytest.raises(ValueError, match="top_kk"):
        feedrank.validate_config({"top_kk": 3})
    with pytest.raises(TypeError, match=r"^cfg:"):
        feedrank.validate_config([1, 2])


def test_reasons_pick_the_strongest_weighted_component():
    comps = np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.1, 0.2, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.5, 1.0, 0.0, 0.0]],
        dtype=np.float32,
    )
    assert feedrank.reasons(comps, (0.4, 0.3, 0.2, 0.1)) == [
        "similar_users",
        "fresh",
        "popular",
        "similar_content",
    ]
    as_dict = dict(zip(feedrank.component_names(), (0.4, 0.3, 0.2, 0.1)))
    assert feedrank.reasons(comps, as_dict) == feedrank.reasons(comps, (0.4, 0.3, 0.2, 0.1))
    with pytest.raises(ValueError, match=r"^components: must have 4 columns"):
        feedrank.reasons(np.zeros((2, 3)), (0.4, 0.3, 0.2, 0.1))
    with pytest.raises(ValueError, match=r"^weights:"):
        feedrank.reasons(comps, (0.4, 0.3, 0.2))
    with pytest.raises(ValueError, match=r"^weights:"):
        feedrank.reasons(comps, (-1, 0.3, 0.2, 0.1))
    with pytest.raises(ValueError, match=r"^weights: missing"):
        feedrank.reasons(comps, {"collaborative": 1.0})
    with pytest.raises(ValueError, match=r"^components: values must be finite"):
        feedrank.reasons(np.full((1, 4), np.nan), (0.4, 0.3, 0.2, 0.1))


def test_recommendations_key():
    assert feedrank.recommendations_key("", "u1") == "recommendations:{u1}"
    assert feedrank.recommendations_key("t:", "u1") == "t:recommendations:{u1}"


def test_cache_entry_round_trip_and_shape():
    comps = np.array([[0.9, 0.4, 0.7, 0.2], [0.0, 0.1, 0.0, 1.0]], dtype=np.float32)
    raw = feedrank.encode_cache_entry(
        42, 1764201600, ["p1", "p2"], np.array([0.8, 0.1]), comps, (0.4, 0.3, 0.2, 0.1)
    )
    assert isinstance(raw, bytes)
    doc = json.loads(raw)
    assert doc["v"] == 2 and doc["run_id"] == 42 and doc["generated_at"] == 1764201600
    assert [it["post_id"] for it in doc["items"]] == ["p1", "p2"]
    assert [it["reason"] for it in doc["items"]] == ["similar_users", "popular"]
    back = feedrank.decode_cache_entry(raw)
    assert back["run_id"] == 42
    assert back["items"][0]["components"] == pytest.approx([0.9, 0.4, 0.7, 0.2])
    assert back["items"][0]["score"] == pytest.approx(0.8)


def test_cache_entry_rejects_garbage_and_mismatched_lengths():
    with pytest.raises(ValueError, match="cannot decode"):
        feedrank.decode_cache_entry(b"not json")
    with pytest.raises(ValueError, match="format version"):
        feedrank.decode_cache_entry(b'{"v":3,"run_id":1,"generated_at":1,"items":[]}')
    with pytest.raises(ValueError, match=r"^scores:"):
        feedrank.encode_cache_entry(
            1, 1, ["a", "b"], np.array([1.0]), np.zeros((2, 4)), (0.4, 0.3, 0.2, 0.1)
        )
    with pytest.raises(ValueError, match=r"^components:"):
        feedrank.encode_cache_entry(
            1, 1, ["a"], np.array([1.0]), np.zeros((2, 4)), (0.4, 0.3, 0.2, 0.1)
        )
