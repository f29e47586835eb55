"""The report's statistics (feedrank.experiment_report), no database: agreement with statsmodels
and scipy to 1e-6, coverage of the 95% intervals over simulated experiments, the sample-ratio
check, and reports with no data that stay JSON without NaN."""

from __future__ import annotations

import doctest
import json
import os

import numpy as np
import pytest
import scipy.stats
import statsmodels.api as sm

from feedrank import experiment_report as er
from feedrank.experiment_report import ArmUsers, compare, cuped, ratio_estimate, sample_ratio, summarize

TOL = 1e-6


def users(rng: np.random.Generator, n: int, click_scale: float = 1.0, pre: bool = False) -> ArmUsers:
    """``n`` users with heterogeneous impressions and per-user click, like, share, hide
    probabilities; ``pre``: a pre-period engagement correlated with the user's click propensity."""
    impressions = 1 + rng.geometric(0.1, n)
    p = rng.beta(2, 30, n) * click_scale
    clicks = rng.binomial(impressions, p)
    likes = rng.binomial(impressions, p / 2)
    shares = rng.binomial(impressions, p / 5)
    hides = rng.binomial(impressions, 0.02)
    pre_engagement = rng.poisson(40 * p).astype(np.float64) if pre else None
    return ArmUsers(impressions, clicks, likes, shares, hides, pre_engagement)


def impression_rows(arms: list[tuple[np.ndarray, np.ndarray]]):
    """Impression-level data of (numerator, denominator) per user per arm: outcome, arm index,
    user id (cluster)."""
    outcome, arm, group = [], [], []
    uid = 0
    for a, (x, y) in enumerate(arms):
        for xi, yi in zip(x, y):
            outcome += [1.0] * int(xi) + [0.0] * int(yi - xi)
            arm += [a] * int(yi)
            group += [uid] * int(yi)
            uid += 1
    return np.array(outcome), np.array(arm), np.array(group)


def clustered_ols(outcome, arm, group):
    design = np.column_stack([np.ones_like(outcome), (arm == 1).astype(float)]) if arm.max() > 0 else np.ones((len(outcome), 1))
    return sm.OLS(outcome, design).fit(cov_type="cluster", cov_kwds={"groups": group, "use_correction": False}, use_t=False)


@pytest.mark.parametrize("metric", ["clicks", "likes", "hides"])
def test_a_ratio_and_its_variance_are_statsmodels_clustered_regression_on_an_intercept(metric):
    rng = np.random.default_rng(1)
    arm = users(rng, 300)
    x = getattr(arm, metric)
    e = ratio_estimate(x, arm.impressions)
    fit = clustered_ols(*impression_rows([(x, arm.impressions)]))
    assert e.value == pytest.approx(fit.params[0], abs=TOL)
    assert e.variance == pytest.approx(fit.cov_params()[0, 0], rel=TOL)
    # the module's formula in moments gives the same number
    mx, my, n = x.mean(), arm.impressions.mean(), len(x)
    sxx, syy = x.var(), arm.impressions.var()
    sxy = np.mean((x - mx) * (arm.impressions - my))
    assert e.variance == pytest.approx((sxx / my**2 - 2 * mx * sxy / my**3 + mx**2 * syy / my**4) / n, rel=TOL)


def test_a_lift_its_interval_and_p_value_are_statsmodels_with_an_arm_dummy():
    rng = np.random.default_rng(2)
    control, treatment = users(rng, 250), users(rng, 280, click_scale=1.3)
    lift = compare(ratio_estimate(control.clicks, control.impressions),
                   ratio_estimate(treatment.clicks, treatment.impressions))
    fit = clustered_ols(*impression_rows([(control.clicks, control.impressions),
                                          (treatment.clicks, treatment.impressions)]))
    b0, b1 = fit.params
    assert lift["control"] == pytest.approx(b0, abs=TOL)
    assert lift["absolute"] == pytest.approx(b1, abs=TOL)
    assert lift["absolute_se"] == pytest.approx(fit.bse[1], rel=TOL)
    assert lift["absolute_ci"] == pytest.approx(list(fit.conf_int(alpha=0.05)[1]), abs=TOL)
    assert lift["p_value"] == pytest.approx(fit.pvalues[1], abs=TOL)
    # relative lift b1 / b0: the delta method on statsmodels' covariance of the coefficients
    gradient = np.array([-b1 / b0**2, 1 / b0])
    relative_se = float(np.sqrt(gradient @ fit.cov_params() @ gradient))
    assert lift["relative"] == pytest.approx(b1 / b0, abs=TOL)
    assert lift["relative_se"] == pytest.approx(relative_se, rel=TOL)
    assert lift["relative_ci"] == pytest.approx([b1 / b0 - er.Z95 * relative_se, b1 / b0 + er.Z95 * relative_se], abs=TOL)


def test_engagement_per_user_is_a_mean_with_heteroskedasticity_robust_hc0_variance():
    rng = np.random.default_rng(3)
    control, treatment = users(rng, 400), users(rng, 350, click_scale=1.2)
    ones = np.ones
    lift = compare(ratio_estimate(control.engagement, ones(control.users)),
                   ratio_estimate(treatment.engagement, ones(treatment.users)))
    y = np.concatenate([control.engagement, treatment.engagement]).astype(float)
    d = np.r_[np.zeros(control.users), np.ones(treatment.users)]
    fit = sm.OLS(y, sm.add_constant(d)).fit(cov_type="HC0", use_t=False)
    assert lift["absolute"] == pytest.approx(fit.params[1], abs=TOL)
    assert lift["absolute_se"] == pytest.approx(fit.bse[1], rel=TOL)
    assert lift["p_value"] == pytest.approx(fit.pvalues[1], abs=TOL)


def test_cuped_is_the_regression_on_the_arm_and_the_pre_period_covariate():
    rng = np.random.default_rng(4)
    arms = {"control": users(rng, 500, pre=True), "treatment": users(rng, 450, click_scale=1.2, pre=True)}
    result = cuped(arms, "control")["treatment"]
    c, t = arms["control"], arms["treatment"]
    y = np.concatenate([c.engagement, t.engagement]).astype(float)
    x = np.concatenate([c.pre_engagement, t.pre_engagement])
    d = np.r_[np.zeros(c.users), np.ones(t.users)]
    fit = sm.OLS(y, np.column_stack([np.ones_like(y), d, x])).fit()
    # the arm's coefficient is the CUPED lift, the covariate's the pooled within-arm theta
    assert result["absolute"] == pytest.approx(fit.params[1], abs=TOL)
    assert result["theta"] == pytest.approx(fit.params[2], rel=TOL)
    # with theta given, the standard error is HC0's on the adjusted outcome
    adjusted = y - result["theta"] * (x - x.mean())
    fit_adjusted = sm.OLS(adjusted, sm.add_constant(d)).fit(cov_type="HC0", use_t=False)
    assert result["absolute_se"] == pytest.approx(fit_adjusted.bse[1], rel=TOL)
    assert result["control"] == pytest.approx(fit_adjusted.params[0], abs=TOL)
    # a covariate that predicts the outcome narrows the interval
    raw = compare(ratio_estimate(c.engagement, np.ones(c.users)), ratio_estimate(t.engagement, np.ones(t.users)))
    assert result["variance_reduction"] == pytest.approx(1 - (result["absolute_se"] / raw["absolute_se"]) ** 2, rel=TOL)
    assert result["variance_reduction"] > 0.1


def test_the_sample_ratio_statistic_is_scipys_chisquare():
    users_per_arm = {"a": 5030, "b": 2950, "c": 2020}
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    srm = sample_ratio(users_per_arm, shares)
    total = sum(users_per_arm.values())
    expected = scipy.stats.chisquare(list(users_per_arm.values()), [total * s for s in shares.values()])
    assert srm["chi2"] == pytest.approx(expected.statistic, rel=TOL)
    assert srm["p_value"] == pytest.approx(expected.pvalue, abs=TOL)
    assert srm["df"] == 2 and srm["passed"]


def test_a_treatment_that_lost_a_tenth_of_its_users_fails_the_sample_ratio_check():
    shares = {"control": 0.5, "treatment": 0.5}
    assert not sample_ratio({"control": 10_000, "treatment": 9_000}, shares)["passed"]
    rng = np.random.default_rng(5)
    # a correct split passes (binomial draws of 20,000 users at 50%)
    passed = [sample_ratio({"control": int(k), "treatment": 20_000 - int(k)}, shares)["passed"]
              for k in rng.binomial(20_000, 0.5, 200)]
    assert sum(passed) >= 198  # 0.1% expected to fail at p < 0.001
    with pytest.raises(ValueError, match="^threshold: "):
        sample_ratio({"control": 1, "treatment": 1}, shares, threshold=1.5)


def _simulated_lift(seed: int, relative_lift: float, n: int = 1000):
    """Two arms of ``n`` users, each with its own number of impressions (1 + geometric, mean 11)
    and click probability (0.5 Beta(2, 18), mean 0.05); treatment users click (1 + lift) times as
    often, so the true CTR ratio is exactly 1 + lift."""
    rng = np.random.default_rng(seed)
    arms = []
    for scale in (1.0, 1.0 + relative_lift):
        impressions = 1 + rng.geometric(0.1, n)
        clicks = rng.binomial(impressions, 0.5 * rng.beta(2, 18, n) * scale)
        arms.append((clicks, impressions))
    return arms


def test_the_95_percent_interval_covers_the_true_lift_in_95_percent_of_simulated_experiments():
    """Measured (seeds 0..N-1): over 1,000 seeds (the default) 0.941 for the relative lift and
    0.943 for the absolute; over 10,000 seeds 0.9479 and 0.9487
    (FEEDRANK_COVERAGE_SEEDS=10000 pytest -s -k covers tests/python/test_report_statistics.py).
    An interval that ignored the clustering (binomial, per impression) covers 0.90 (0.8992 over
    10,000): the last assertion shows the test can tell."""
    seeds = int(os.environ.get("FEEDRANK_COVERAGE_SEEDS", "1000"))
    lift = 0.10
    true_absolute = 0.5 * 0.1 * lift  # E[p] = 0.5 * 2/20
    relative = absolute = naive = 0
    for seed in range(seeds):
        (xc, yc), (xt, yt) = _simulated_lift(seed, lift)
        r = compare(ratio_estimate(xc, yc), ratio_estimate(xt, yt))
        relative += r["relative_ci"][0] <= lift <= r["relative_ci"][1]
        absolute += r["absolute_ci"][0] <= true_absolute <= r["absolute_ci"][1]
        rc, rt = xc.sum() / yc.sum(), xt.sum() / yt.sum()
        se = np.sqrt(rc * (1 - rc) / yc.sum() + rt * (1 - rt) / yt.sum())
        naive += abs(rt - rc - true_absolute) <= er.Z95 * se
    tolerance = 3 * np.sqrt(0.95 * 0.05 / seeds)
    print(f"coverage over {seeds} seeds: relative {relative / seeds:.4f}, absolute {absolute / seeds:.4f}, "
          f"unclustered {naive / seeds:.4f} (tolerance +-{tolerance:.4f})")
    assert abs(relative / seeds - 0.95) <= tolerance
    assert abs(absolute / seeds - 0.95) <= tolerance
    assert naive / seeds < 0.95 - tolerance


EXPERIMENT = {"name": "fresh_mix", "salt": "fm-1", "arms": [
    {"name": "control", "share": 0.5}, {"name": "fresh_only", "share": 0.3}, {"name": "random", "share": 0.2}]}
WINDOW = {"from": "2026-12-01T00:00:00+00:00", "until": "2026-12-02T00:00:00+00:00", "pre_period": None}


def test_a_report_with_no_traffic_has_zeros_and_null_lifts_with_a_reason_and_no_nan():
    report = summarize(EXPERIMENT, {}, WINDOW)
    text = json.dumps(report, allow_nan=False)  # raises on NaN or infinity
    assert json.loads(text) == report
    assert [a["users"] for a in report["arms"]] == [0, 0, 0]
    assert all(a["ctr"] == 0.0 and a["engagement_per_user"] == 0.0 for a in report["arms"])
    assert report["control"] == "control"
    assert len(report["lifts"]) == 2 * 5
    for lift in report["lifts"]:
        assert lift["absolute"] is None and lift["p_value"] is None
        assert lift["reason"] == "control: 0 user(s): needs at least 2"
    assert report["srm"]["passed"] and report["srm"]["p_value"] == 1.0


def test_a_report_sums_each_arm_and_compares_each_with_the_first_arm():
    rng = np.random.default_rng(6)
    arms = {"control": users(rng, 200), "fresh_only": users(rng, 120, click_scale=1.5), "random": users(rng, 80)}
    arms["control"] = ArmUsers(*[getattr(arms["control"], k) for k in ("impressions", "clicks", "likes", "shares", "hides")],
                               sources={"personalized": {"impressions": 900, "clicks": 40}, "fresh": {"impressions": 0, "clicks": 0}})
    report = summarize(EXPERIMENT, arms, WINDOW)
    json.dumps(report, allow_nan=False)
    control = report["arms"][0]
    c = arms["control"]
    assert control["users"] == 200 and control["impressions"] == c.impressions.sum()
    assert control["ctr"] == pytest.approx(c.clicks.sum() / c.impressions.sum())
    assert control["engaged_users"] == int((c.clicks + c.likes + c.shares >= 1).sum())
    assert control["engagement_per_user"] == pytest.approx((c.clicks + c.likes + c.shares).mean())
    assert control["sources"] == {"fresh": {"impressions": 0, "clicks": 0, "ctr": 0.0},
                                  "personalized": {"impressions": 900, "clicks": 40, "ctr": 40 / 900}}
    assert {(lift["arm"], lift["metric"]) for lift in report["lifts"]} == {
        (arm, m) for arm in ("fresh_only", "random") for m in (*er.RATIO_METRICS, "engagement_per_user")}
    ctr = next(lift for lift in report["lifts"] if lift["arm"] == "fresh_only" and lift["metric"] == "ctr")
    assert ctr["control"] == pytest.approx(control["ctr"]) and ctr["treatment"] == pytest.approx(report["arms"][1]["ctr"])
    engagement = next(lift for lift in report["lifts"] if lift["metric"] == "engagement_per_user")
    assert engagement["cuped"] is None and engagement["cuped_reason"] == "no pre-period"
    assert report["srm"]["users"] == {"control": 200, "fresh_only": 120, "random": 80}


def test_a_zero_control_rate_has_an_absolute_lift_and_no_relative_one():
    zero = ratio_estimate(np.zeros(10), np.full(10, 5))
    some = ratio_estimate(np.r_[np.zeros(8), 1, 2], np.full(10, 5))
    lift = compare(zero, some)
    assert lift["absolute"] == pytest.approx(0.06) and lift["relative"] is None
    assert "the control's value is 0" in lift["reason"]
    flat = compare(zero, zero)
    assert flat["absolute"] == 0.0 and flat["p_value"] is None and "no variation" in flat["reason"]


def test_arrays_of_different_lengths_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="^likes: expected 3 users"):
        ArmUsers(np.ones(3), np.ones(3), np.ones(2), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"^arms: \['nope'\] are not arms"):
        summarize(EXPERIMENT, {"nope": ArmUsers.empty()}, WINDOW)


def test_the_examples_in_the_docstrings_run():
    failures, tried = doctest.testmod(er, extraglobs={"np": np})
    assert tried >= 3 and failures == 0
