"""An experiment's report (issue 14, part 4): per arm and per source, impressions, clicks, rates
and engagement; each arm's lift over the control with 95% confidence intervals; the
sample-ratio-mismatch check. One implementation, used by ``feedrank experiments report`` and the
Dagster asset ``experiment_report`` (docs/experiments.md, "Report", says what each number means).

Two layers:

- pure functions over per-user numpy arrays (:class:`ArmUsers`), no database:
  :func:`ratio_estimate`, :func:`compare`, :func:`cuped`, :func:`sample_ratio`, :func:`summarize`;
- :func:`report` reads one experiment's per-user aggregates from PostgreSQL (grouped in SQL, one
  row per user and arm comes back) and calls :func:`summarize`.

Conventions (the tests compare them with statsmodels to 1e-6):

- The **control** is the experiment's first arm; every other arm is compared with it.
- The **user is the unit**: a ratio metric (CTR = clicks / impressions, like/share/hide rate per
  impression) is sum(x) / sum(y) over the arm's users, x and y the user's numerator and
  denominator; its variance is the delta method's, clustered by user, with population (1/n)
  moments: Var = (1/n) (s_x^2/mu_y^2 - 2 mu_x s_xy/mu_y^3 + mu_x^2 s_y^2/mu_y^4), which equals
  sum((x - R y)^2) / sum(y)^2: the cluster-robust variance of an impression-level regression on
  an intercept without small-sample correction. Engagement per user is the same with y = 1 per
  user (a mean, with the population variance: Welch's unequal variances, HC0).
- Arms are independent: Var(treatment - control) = Var(t) + Var(c). Relative lift
  t/c - 1 has the delta method's variance Var(t)/c^2 + t^2 Var(c)/c^4. Intervals are normal,
  +-1.959963984540054 standard errors; the p-value is the two-sided normal test of absolute = 0.
- CUPED (engagement per user only): the covariate is each user's click, like and share events in
  the pre-period, the window of the experiment's length (at most :data:`PRE_PERIOD_CAP`) just
  before its start; theta is the within-arm slope pooled over all arms,
  sum_a sum_i (X - X_a)(Y - Y_a) / sum_a sum_i (X - X_a)^2, and each user's outcome becomes
  Y - theta (X - mean X over all users); theta is treated as known.
- Sample ratio: a chi-square goodness of fit of the users per arm against the arms' shares; it
  passes when p >= :data:`SRM_THRESHOLD` (0.001).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

__all__ = [
    "ENGAGEMENT_TYPES",
    "EVENT_TYPES",
    "PRE_PERIOD_CAP",
    "RATIO_METRICS",
    "SRM_THRESHOLD",
    "Z95",
    "ArmUsers",
    "Estimate",
    "arm_summary",
    "compare",
    "cuped",
    "ratio_estimate",
    "report",
    "sample_ratio",
    "summarize",
]

Z95 = 1.959963984540054
# A sample-ratio mismatch this unlikely under the configured shares fails the check: with many
# experiments and daily reports a looser threshold would cry wolf (1 in 20 reports at 0.05).
SRM_THRESHOLD = 0.001
# The pre-period is as long as the experiment has run, at most this long.
PRE_PERIOD_CAP = timedelta(days=14)
EVENT_TYPES = ("click", "like", "share", "hide")
# The events that count as engagement (an engaged user has one; engagement per user sums them).
ENGAGEMENT_TYPES = ("click", "like", "share")
# metric -> the per-user numerator (the denominator is the user's impressions)
RATIO_METRICS = {"ctr": "clicks", "like_rate": "likes", "share_rate": "shares", "hide_rate": "hides"}
ENGAGEMENT = "engagement_per_user"


@dataclass(frozen=True)
class ArmUsers:
    """One arm's exposed users: entry i of every array is user i. Counts are per user: the
    impressions served, and the distinct impressions clicked, liked, shared and hidden.
    ``pre_engagement`` (float) is each user's engagement events in the pre-period, or None when
    there is no pre-period."""

    impressions: np.ndarray
    clicks: np.ndarray
    likes: np.ndarray
    shares: np.ndarray
    hides: np.ndarray
    pre_engagement: np.ndarray | None = None
    # per source: {"impressions": int, "clicks": int}
    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.impressions)
        for name in ("clicks", "likes", "shares", "hides", "pre_engagement"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name}: expected {n} users (as impressions), got {len(values)}")

    @classmethod
    def empty(cls) -> ArmUsers:
        zero = np.zeros(0, np.int64)
        return cls(zero, zero, zero, zero, zero)

    @property
    def users(self) -> int:
        return len(self.impressions)

    @property
    def engagement(self) -> np.ndarray:
        return self.clicks + self.likes + self.shares


@dataclass(frozen=True)
class Estimate:
    """A metric's value in one arm and its variance (None when it cannot be estimated, with
    ``reason``)."""

    value: float | None
    variance: float | None
    users: int
    reason: str | None = None


def ratio_estimate(x: np.ndarray, y: np.ndarray) -> Estimate:
    """sum(x) / sum(y) over users and its delta-method variance clustered by user, population
    moments (see the module's docstring). ``y`` all ones: the mean of ``x`` and var(x) / n.

    >>> e = ratio_estimate(np.array([1, 0, 3]), np.array([2, 2, 4]))
    >>> round(e.value, 4), round(e.variance, 6)
    (0.5, 0.03125)
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.size
    if n < 2:
        return Estimate(None, None, n, f"{n} user(s): needs at least 2")
    total = y.sum()
    if total <= 0:
        return Estimate(None, None, n, "no impressions")
    r = x.sum() / total
    # = (1/n)(s_x^2/mu_y^2 - 2 mu_x s_xy/mu_y^3 + mu_x^2 s_y^2/mu_y^4): the same quantity,
    # computed from the residuals x - r y, which cannot come out negative by cancellation
    residual = x - r * y
    return Estimate(float(r), float(residual @ residual / (total * total)), n)


def _interval(value: float, se: float) -> list[float]:
    return [value - Z95 * se, value + Z95 * se]


def _p_value(value: float, se: float) -> float:
    from scipy.stats import norm

    return float(2.0 * norm.sf(abs(value) / se))


def compare(control: Estimate, treatment: Estimate) -> dict[str, Any]:
    """The lift of ``treatment`` over ``control`` (independent arms): absolute and relative, each
    with its standard error and 95% interval, and the p-value of absolute = 0. A part that
    cannot be computed is None and ``reason`` says why."""
    out: dict[str, Any] = {
        "control": control.value, "treatment": treatment.value,
        "absolute": None, "absolute_se": None, "absolute_ci": None,
        "relative": None, "relative_se": None, "relative_ci": None,
        "p_value": None, "reason": None,
    }
    for arm, e in (("control", control), ("treatment", treatment)):
        if e.value is None:
            out["reason"] = f"{arm}: {e.reason}"
            return out
    c, t = control.value, treatment.value
    absolute = t - c
    se = math.sqrt(treatment.variance + control.variance)
    out.update(absolute=absolute, absolute_se=se, absolute_ci=_interval(absolute, se))
    reasons = []
    if se > 0:
        out["p_value"] = _p_value(absolute, se)
    else:
        reasons.append("no variation within either arm: no p-value")
    if c != 0:
        relative = t / c - 1.0
        relative_se = math.sqrt(treatment.variance / c**2 + t**2 * control.variance / c**4)
        out.update(relative=relative, relative_se=relative_se, relative_ci=_interval(relative, relative_se))
    else:
        reasons.append("the control's value is 0: no relative lift")
    out["reason"] = "; ".join(reasons) or None
    return out


def cuped_theta(outcomes: Sequence[np.ndarray], covariates: Sequence[np.ndarray]) -> float | None:
    """The within-arm regression slope of outcome on covariate, pooled over the arms; None when
    the covariate does not vary within any arm."""
    sxy = sxx = 0.0
    for y, x in zip(outcomes, covariates):
        if len(x) == 0:
            continue
        dx = np.asarray(x, np.float64) - np.mean(x)
        sxy += float(dx @ (np.asarray(y, np.float64) - np.mean(y)))
        sxx += float(dx @ dx)
    return sxy / sxx if sxx > 0 else None


def cuped(arms: Mapping[str, ArmUsers], control: str) -> dict[str, dict[str, Any]] | str:
    """CUPED-adjusted engagement-per-user lifts of every arm over ``control``: per treatment arm,
    :func:`compare`'s fields on the adjusted outcome plus ``theta`` and ``variance_reduction``
    (1 - adjusted variance / raw variance of the absolute lift). A string says why there is none."""
    if any(a.pre_engagement is None for a in arms.values()):
        return "no pre-period"
    outcomes = [a.engagement for a in arms.values()]
    covariates = [a.pre_engagement for a in arms.values()]
    theta = cuped_theta(outcomes, covariates)
    if theta is None:
        return "the pre-period engagement does not vary within the arms"
    everyone = np.concatenate(covariates)
    centre = float(everyone.mean())
    ones = {name: np.ones(a.users) for name, a in arms.items()}
    adjusted = {
        name: ratio_estimate(a.engagement - theta * (a.pre_engagement - centre), ones[name])
        for name, a in arms.items()
    }
    out = {}
    for name, a in arms.items():
        if name == control:
            continue
        raw = compare(ratio_estimate(arms[control].engagement, ones[control]), ratio_estimate(a.engagement, ones[name]))
        adj = compare(adjusted[control], adjusted[name])
        reduction = None
        if raw["absolute_se"] and adj["absolute_se"] is not None:
            reduction = 1.0 - (adj["absolute_se"] / raw["absolute_se"]) ** 2
        out[name] = {"theta": theta, **adj, "variance_reduction": reduction}
    return out


def sample_ratio(users: Mapping[str, int], shares: Mapping[str, float], threshold: float = SRM_THRESHOLD) -> dict[str, Any]:
    """Chi-square goodness of fit of the users per arm against the arms' shares (df = arms - 1);
    ``passed`` when p >= ``threshold``. No user at all passes (nothing is off yet).

    >>> sample_ratio({"a": 500, "b": 450}, {"a": 0.5, "b": 0.5})["passed"]
    True
    >>> sample_ratio({"a": 5000, "b": 4500}, {"a": 0.5, "b": 0.5})["passed"]
    False
    """
    from scipy.stats import chi2 as chi2_distribution

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: must be in (0, 1), got {threshold}")
    if set(users) != set(shares):
        raise ValueError(f"users: arms {sorted(users)} differ from the shares' {sorted(shares)}")
    total = sum(users.values())
    df = len(shares) - 1
    chi2, p = 0.0, 1.0
    if total > 0:
        chi2 = float(sum((users[a] - total * s) ** 2 / (total * s) for a, s in shares.items()))
        p = float(chi2_distribution.sf(chi2, df))
    return {
        "users": {a: int(users[a]) for a in shares},
        "expected_shares": {a: float(s) for a, s in shares.items()},
        "chi2": chi2, "df": df, "p_value": p, "threshold": threshold, "passed": p >= threshold,
    }


def _rate(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def arm_summary(name: str, share: float, users: ArmUsers) -> dict[str, Any]:
    """An arm's counts and rates (a rate with no impressions, or engagement with no user, is 0)."""
    impressions = int(users.impressions.sum())
    counts = {k: int(getattr(users, k).sum()) for k in ("clicks", "likes", "shares", "hides")}
    engagement = users.engagement
    return {
        "arm": name,
        "share": float(share),
        "users": users.users,
        "impressions": impressions,
        **counts,
        **{metric: _rate(counts[numerator], impressions) for metric, numerator in RATIO_METRICS.items()},
        "engaged_users": int((engagement >= 1).sum()),
        ENGAGEMENT: _rate(engagement.sum(), users.users),
        "sources": {
            source: {"impressions": int(s["impressions"]), "clicks": int(s["clicks"]),
                     "ctr": _rate(s["clicks"], s["impressions"])}
            for source, s in sorted(users.sources.items())
        },
    }


def summarize(
    experiment: Mapping[str, Any],
    arms: Mapping[str, ArmUsers],
    window: Mapping[str, Any],
    srm_threshold: float = SRM_THRESHOLD,
) -> dict[str, Any]:
    """The report of ``experiment`` (its definition: name, salt, arms with name and share) from
    each arm's users (an arm missing from ``arms`` had none). JSON-able: no NaN anywhere."""
    definition = list(experiment["arms"])
    names = [a["name"] for a in definition]
    unknown = set(arms) - set(names)
    if unknown:
        raise ValueError(f"arms: {sorted(unknown)} are not arms of experiment {experiment['name']!r}")
    data = {n: arms.get(n, ArmUsers.empty()) for n in names}
    control = names[0]
    ones = {n: np.ones(data[n].users) for n in names}
    lifts = []
    cuped_lifts = cuped(data, control)
    for name in names[1:]:
        for metric, numerator in RATIO_METRICS.items():
            c = ratio_estimate(getattr(data[control], numerator), data[control].impressions)
            t = ratio_estimate(getattr(data[name], numerator), data[name].impressions)
            lifts.append({"arm": name, "metric": metric, **compare(c, t), "cuped": None})
        c = ratio_estimate(data[control].engagement, ones[control])
        t = ratio_estimate(data[name].engagement, ones[name])
        entry = {"arm": name, "metric": ENGAGEMENT, **compare(c, t)}
        if isinstance(cuped_lifts, str):
            entry.update(cuped=None, cuped_reason=cuped_lifts)
        else:
            entry["cuped"] = cuped_lifts[name]
        lifts.append(entry)
    return {
        "experiment": experiment["name"],
        "salt": experiment["salt"],
        "control": control,
        "window": dict(window),
        "arms": [arm_summary(a["name"], a["share"], data[a["name"]]) for a in definition],
        "lifts": lifts,
        "srm": sample_ratio({n: data[n].users for n in names}, {a["name"]: a["share"] for a in definition}, srm_threshold),
    }


# --- reading PostgreSQL --------------------------------------------------------------------------

# One statement, one scan of the window's served pages (materialized once, used four times); it
# returns rows of four kinds, each already grouped:
#   exposure  (user, arm, impressions)           a user's impressions in an arm
#   source    (arm, source code, impressions)    the arm's impressions per source
#   event     (user, arm, type, source code, n)  distinct impressions the user acted on
#   pre       (user, n)                          the user's engagement events before the start
# An event counts when it names a page of the window (request_id) and a position on it, is the
# page's user's own, and happened before the window's end; an impression clicked twice counts
# once. Pages carry 'experiment:arm' labels; a page matches an arm by its label.
_REPORT_SQL = """
WITH arm_labels (label, arm) AS (
    SELECT * FROM unnest(%(labels)s::text[], %(arms)s::text[])
),
pages AS MATERIALIZED (
    SELECT p.request_id, p.user_id, p.first_position, p.source_codes, a.arm
    FROM served_pages p JOIN arm_labels a ON a.label = ANY (p.arms)
    WHERE p.served_at >= %(from)s AND p.served_at < %(until)s
),
exposure AS (
    SELECT user_id, arm, sum(length(source_codes))::bigint AS n FROM pages GROUP BY user_id, arm
),
-- pages of one arm mostly repeat a few layouts of sources (the blend's slots): each distinct
-- layout is unpacked once, not each page (200,000 pages of 50 posts in one layout: 0.14 s
-- instead of 7 s; pages all laid out differently cost the 7 s)
layouts AS (
    SELECT arm, source_codes, count(*) AS pages FROM pages GROUP BY arm, source_codes
),
by_source AS (
    SELECT arm, get_byte(source_codes, i.n) AS code, sum(pages)::bigint AS n
    FROM layouts CROSS JOIN LATERAL generate_series(0, length(source_codes) - 1) AS i (n)
    GROUP BY arm, code
),
events AS (
    SELECT pg.user_id, pg.arm, e.interaction_type::text AS kind,
           get_byte(pg.source_codes, e.position - pg.first_position) AS code,
           count(DISTINCT (e.request_id, e.position)) AS n
    FROM user_interactions e
    JOIN pages pg ON pg.request_id = e.request_id AND pg.user_id = e.user_id
     AND e.position >= pg.first_position AND e.position < pg.first_position + length(pg.source_codes)
    WHERE e.request_id IS NOT NULL AND e.created_at < %(until)s
      AND e.interaction_type = ANY (%(event_types)s::text[])
    GROUP BY 1, 2, 3, 4
),
pre AS (
    SELECT e.user_id, count(*) AS n FROM user_interactions e
    WHERE e.created_at >= %(pre_from)s AND e.created_at < %(from)s
      AND e.interaction_type = ANY (%(engagement_types)s::text[])
      AND e.user_id IN (SELECT user_id FROM exposure)
    GROUP BY e.user_id
)
SELECT 'exposure', user_id, arm, NULL, NULL, n FROM exposure
UNION ALL SELECT 'source', NULL, arm, NULL, code, n FROM by_source
UNION ALL SELECT 'event', user_id, arm, kind, code, n FROM events
UNION ALL SELECT 'pre', user_id, NULL, NULL, NULL, n FROM pre
"""


def _experiment(conn, name: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT definition, starts_at, ends_at, stopped_at FROM experiments WHERE name = %s", (name,)
    ).fetchone()
    if row is None:
        raise ValueError(f"name: no experiment named {name!r}")
    definition, starts_at, ends_at, stopped_at = row
    if starts_at is None:
        raise ValueError(
            f"name: experiment {name!r} has not been started (feedrank experiments start {name})")
    return {**definition, "starts_at": starts_at, "ends_at": ends_at, "stopped_at": stopped_at}


def _pre_period(experiment: Mapping[str, Any], until: datetime) -> tuple[datetime, datetime] | None:
    """As long as the experiment ran up to ``until`` (its end or stop if earlier), at most
    :data:`PRE_PERIOD_CAP`, ending at its start."""
    start = experiment["starts_at"]
    end = min(t for t in (until, experiment["ends_at"], experiment["stopped_at"]) if t is not None)
    length = min(end - start, PRE_PERIOD_CAP)
    if length <= timedelta(0):
        return None
    return start - length, start


def _source(names: Mapping[int, str], code: int) -> str:
    # a code written by a newer API than this reader's migrations: shown, not dropped
    return names.get(code, f"code_{code}")


def _collect(rows, names: Sequence[str], source_names: Mapping[int, str], with_pre: bool) -> dict[str, ArmUsers]:
    index: dict[str, dict[Any, int]] = {n: {} for n in names}
    impressions: dict[str, list[int]] = {n: [] for n in names}
    sources: dict[str, dict[str, dict[str, int]]] = {n: {} for n in names}
    events, pre = [], {}
    for kind, user, arm, event_type, code, n in rows:
        if kind == "exposure":
            index[arm][user] = len(impressions[arm])
            impressions[arm].append(n)
        elif kind == "source":
            sources[arm].setdefault(_source(source_names, code), {"impressions": 0, "clicks": 0})["impressions"] += n
        elif kind == "event":
            events.append((user, arm, event_type, code, n))
        else:
            pre[user] = n
    counts = {n: {t: np.zeros(len(impressions[n]), np.int64) for t in EVENT_TYPES} for n in names}
    for user, arm, event_type, code, n in events:
        counts[arm][event_type][index[arm][user]] += n
        if event_type == "click":
            sources[arm].setdefault(_source(source_names, code), {"impressions": 0, "clicks": 0})["clicks"] += n
    out = {}
    for arm in names:
        c = counts[arm]
        pre_engagement = None
        if with_pre:
            pre_engagement = np.zeros(len(impressions[arm]), np.float64)
            for user, i in index[arm].items():
                pre_engagement[i] = pre.get(user, 0)
        out[arm] = ArmUsers(
            np.asarray(impressions[arm], np.int64), c["click"], c["like"], c["share"], c["hide"],
            pre_engagement, sources[arm],
        )
    return out


def report(conn, name: str, until: datetime | None = None, srm_threshold: float = SRM_THRESHOLD) -> dict[str, Any]:
    """The report of experiment ``name`` over its window, from its start to ``until`` (default:
    the database's now): impressions served in the window and the events on them tracked
    before ``until``. Reads only. Raises ValueError naming ``name`` for an unknown or never
    started experiment, naming ``until`` for an end before the start."""
    experiment = _experiment(conn, name)
    if until is None:
        until = conn.execute("SELECT now()").fetchone()[0]
    if until.tzinfo is None:
        raise ValueError(f"until: needs a time zone, got {until.isoformat()}")
    start = experiment["starts_at"]
    if until <= start:
        raise ValueError(
            f"until: {until.isoformat()} is not after the start of experiment {name!r} ({start.isoformat()})")
    names = [a["name"] for a in experiment["arms"]]
    pre_period = _pre_period(experiment, until)
    source_names = dict(conn.execute("SELECT code, name FROM served_sources").fetchall())
    rows = conn.execute(_REPORT_SQL, {
        "labels": [f"{name}:{a}" for a in names],
        "arms": names,
        "from": start,
        "until": until,
        # no pre-period: an empty range
        "pre_from": pre_period[0] if pre_period else start,
        "event_types": list(EVENT_TYPES),
        "engagement_types": list(ENGAGEMENT_TYPES),
    }).fetchall()
    arms = _collect(rows, names, source_names, with_pre=pre_period is not None)
    window = {
        "from": start.isoformat(),
        "until": until.isoformat(),
        "pre_period": None if pre_period is None else {"from": pre_period[0].isoformat(), "until": pre_period[1].isoformat()},
    }
    return summarize(experiment, arms, window, srm_threshold)
