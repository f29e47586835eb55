"""The binding's experiment functions: ``validate_experiment`` (the core's validation, errors
naming the field) and ``assign_arm`` (the core's assignment, the one the API runs)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

import feedrank

USER = "6f1c2a52-3d4e-4b8f-9a0b-1c2d3e4f5a6b"


def reference_point(salt: str, user_id: str) -> float:
    """The assignment's formula as docs/api.md states it, written independently of the core:
    FNV-1a 64 of salt, 0xFF, user id; MurmurHash3's fmix64; the top 53 bits over 2^53."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in salt.encode() + b"\xff" + user_id.encode():
        h = ((h ^ byte) * 0x100000001B3) & mask
    for shift, multiplier in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53)):
        h ^= h >> shift
        h = (h * multiplier) & mask
    h ^= h >> 33
    return (h >> 11) / 2**53


def reference_arm(salt: str, user_id: str, shares: list[float]) -> int:
    point, cumulative = reference_point(salt, user_id), 0.0
    for i, share in enumerate(shares):
        cumulative += share
        if point < cumulative:
            return i
    return len(shares) - 1


def test_assign_arm_is_the_documented_formula_in_any_language():
    assert feedrank.assign_arm("s1", USER, [0.2, 0.3, 0.5]) == 2  # the core's fixed vector
    shares = [0.1, 0.25, 0.65]
    for i in range(2_000):
        user = str(uuid.UUID(int=i * 0x9E3779B97F4A7C15 % 2**128))
        for salt in ("layer-a", "fresh-mix-2026-12", ""):
            assert feedrank.assign_arm(salt, user, shares) == reference_arm(salt, user, shares), (salt, user)


def test_assign_arm_follows_the_shares_and_rejects_bad_ones():
    counts = [0, 0]
    for i in range(20_000):
        counts[feedrank.assign_arm("split", f"00000000-0000-4000-8000-{i:012x}", [0.25, 0.75])] += 1
    assert abs(counts[0] - 5_000) < 4.5 * (20_000 * 0.25 * 0.75) ** 0.5
    with pytest.raises(ValueError, match=r"^shares: shares must sum to 1, got 0.9"):
        feedrank.assign_arm("s1", USER, [0.5, 0.4])
    with pytest.raises(ValueError, match=r"^shares\[1\]: must be in \(0, 1\], got 0"):
        feedrank.assign_arm("s1", USER, [1.0, 0.0])


def test_validate_experiment_normalizes_and_names_bad_fields():
    arms = [{"name": "control", "share": 0.5, "kind": "config", "config": {"top_k": 50}},
            {"name": "random", "share": 0.5, "kind": "random"}]
    e = feedrank.validate_experiment({"name": "e", "salt": "s", "starts_at": "2026-12-01T00:00:00Z", "arms": arms})
    assert e == {"name": "e", "salt": "s", "starts_at": "2026-12-01T00:00:00Z", "ends_at": None, "arms": arms}
    with pytest.raises(ValueError, match=r"^arms\[0\]\.config\.top_kk: unknown field `top_kk`"):
        feedrank.validate_experiment({"name": "e", "salt": "s", "arms": [
            {"name": "a", "share": 0.5, "kind": "config", "config": {"top_kk": 1}}, arms[1]]})
    with pytest.raises(ValueError, match=r"^arms\[1\]\.share: must be in \(0, 1\], got 2"):
        feedrank.validate_experiment({"name": "e", "salt": "s", "arms": [arms[0], {**arms[1], "share": 2}]})
    with pytest.raises(TypeError, match=r"^experiment: expected a dict"):
        feedrank.validate_experiment([arms])  # type: ignore[arg-type]


# The rule's test vector, shared with the core's tests (rust/core/src/experiment.rs).
RULE_VECTOR = Path(__file__).resolve().parents[2] / "rust" / "core" / "testdata" / "experiment_rule.json"


def reference_applied(experiments: list[dict], user_id: str) -> tuple[list[str], str | None]:
    """The rule as docs/experiments.md states it, written independently of the core: the
    experiments earliest start first (then by name); the first whose arm for the user changes the
    feed (anything but a config arm of {}) applies."""
    arms, applied = [], None
    for e in sorted(experiments, key=lambda e: (e["starts_at"], e["name"])):
        arm = e["arms"][reference_arm(e["salt"], user_id, [a["share"] for a in e["arms"]])]
        arms.append(arm["name"])
        if applied is None and (arm["kind"] != "config" or arm["config"]):
            applied = f"{e['name']}:{arm['name']}"
    return arms, applied


def test_experiment_arms_is_the_cores_rule_on_the_shared_vector():
    doc = json.loads(RULE_VECTOR.read_text())
    experiments, cases = doc["experiments"], doc["cases"]
    table = feedrank.experiment_arms(experiments, [c["user"] for c in cases])
    assert table["arms"].shape == (len(cases), len(experiments)) and table["applied"].dtype == np.int32
    order = [next(i for i, e in enumerate(experiments) if e["name"] == n) for n in doc["order"]]
    for case, row, applied in zip(cases, table["arms"], table["applied"]):
        got_arms = [experiments[i]["arms"][row[i]]["name"] for i in order]
        got = None if applied < 0 else f"{experiments[applied]['name']}:{experiments[applied]['arms'][row[applied]]['name']}"
        assert (got_arms, got) == (case["arms"], case["applied"]), case["user"]
        assert reference_applied(experiments, case["user"]) == (case["arms"], case["applied"]), case["user"]


def test_experiment_arms_names_a_bad_experiment_and_its_field():
    doc = json.loads(RULE_VECTOR.read_text())
    bad = json.loads(json.dumps(doc["experiments"]))
    bad[1]["arms"][1]["config"] = {"lookback_days": 3}
    with pytest.raises(ValueError, match=r"^experiments\[1\]\.arms\[1\]\.config\.lookback_days: a config arm cannot set"):
        feedrank.experiment_arms(bad, ["u"])
    with pytest.raises(TypeError, match=r"^experiments\[0\]: expected a dict"):
        feedrank.experiment_arms(["x"], ["u"])
    empty = feedrank.experiment_arms([], ["u", "v"])
    assert empty["arms"].shape == (2, 0) and empty["applied"].tolist() == [-1, -1]
