"""``experiment_report``: every experiment's report, a daily partition at a time (issue 14, part 4).

A partition (a UTC day) holds the report of each experiment that ran during that day (started
before its end, not ended or stopped before its start), computed by
``feedrank.experiment_report.report`` over the experiment's whole window **from its start to the
end of that day** (cumulative; today's partition: up to now). Cumulative because the decision an
operator takes is on everything an experiment has collected so far, and a day's users alone
would count a returning user once per day; the partitions' history shows how the estimate and
its interval settled, day after day.

Metadata per materialization: ``experiments`` (how many), ``report`` (the reports as JSON), a
markdown table per experiment (``<name>``), numeric ``<name>/<arm>/ctr_relative_lift`` and
``.../ctr_p_value`` (Dagster plots numeric metadata across partitions), and ``chart``: each arm's
relative lifts with their 95% intervals, a PNG embedded in markdown (shown in the asset's
materialization view, as recommendation_quality's chart).

``experiment_sample_ratio`` (severity ERROR), evaluated with the asset from the same reports,
fails when any experiment's users per arm are off its shares (chi-square p < 0.001).
"""

import io
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
from feedrank.experiment_report import report

from dagster_pipeline.partitions import report_days
from dagster_pipeline.quality import chart_markdown
from dagster_pipeline.resources import PostgresResource

EXPERIMENT_REPORT = dg.AssetKey("experiment_report")
SAMPLE_RATIO = dg.AssetCheckSpec(
    "experiment_sample_ratio",
    asset=EXPERIMENT_REPORT,
    description="Each experiment's users per arm match the arms' shares (chi-square goodness of "
    "fit, fails at p < 0.001): a mismatch means the split or the logging is broken and the "
    "lifts cannot be trusted.",
)


def experiments_of_day(conn, day_start: datetime, day_end: datetime) -> list[str]:
    """The experiments that ran during [day_start, day_end): started before its end, neither
    ended nor stopped before its start. By start, then name."""
    rows = conn.execute(
        "SELECT name FROM experiments WHERE starts_at IS NOT NULL AND starts_at < %(end)s "
        "AND (least(ends_at, stopped_at) IS NULL OR least(ends_at, stopped_at) > %(start)s) "
        "ORDER BY starts_at, name",
        {"start": day_start, "end": day_end},
    ).fetchall()
    return [r[0] for r in rows]


def reports_of_day(conn, day: str) -> list[dict[str, Any]]:
    """The cumulative reports, up to the end of ``day`` (YYYY-MM-DD, UTC) or now if earlier, of
    the experiments that ran that day."""
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    now = conn.execute("SELECT now()").fetchone()[0]
    until = min(start + timedelta(days=1), now)
    return [report(conn, name, until=until) for name in experiments_of_day(conn, start, until)]


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    """One experiment's report as markdown: the arms, then the lifts over the control."""
    lines = [
        f"**{result['experiment']}** (control `{result['control']}`, window {result['window']['from']} .. "
        f"{result['window']['until']}; sample ratio {'passed' if result['srm']['passed'] else '**FAILED**'}, "
        f"p {result['srm']['p_value']:.3g})",
        "",
        "| arm | share | users | impressions | clicks | CTR | like rate | share rate | hide rate | engaged users | engagement/user |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in result["arms"]:
        lines.append(
            f"| {a['arm']} | {a['share']:.0%} | {a['users']} | {a['impressions']} | {a['clicks']} | {a['ctr']:.4f} "
            f"| {a['like_rate']:.4f} | {a['share_rate']:.4f} | {a['hide_rate']:.4f} | {a['engaged_users']} "
            f"| {a['engagement_per_user']:.3f} |"
        )
    lines += ["", "| arm | metric | control | treatment | relative lift | 95% CI | p | CUPED relative [95% CI] |",
              "|---|---|---|---|---|---|---|---|"]
    for x in result["lifts"]:
        ci = x["relative_ci"]
        cuped = x.get("cuped")
        cuped_text = "" if not cuped else (
            f"{_fmt(cuped['relative'], '+.1%')} [{_fmt(cuped['relative_ci'][0] if cuped['relative_ci'] else None, '+.1%')}, "
            f"{_fmt(cuped['relative_ci'][1] if cuped['relative_ci'] else None, '+.1%')}]")
        lines.append(
            f"| {x['arm']} | {x['metric']} | {_fmt(x['control'], '.4f')} | {_fmt(x['treatment'], '.4f')} "
            f"| {_fmt(x['relative'], '+.1%')} | {'–' if ci is None else f'[{ci[0]:+.1%}, {ci[1]:+.1%}]'} "
            f"| {_fmt(x['p_value'], '.3g')} | {cuped_text or (x['reason'] or '')} |"
        )
    return "\n".join(lines)


def lift_chart(reports: list[dict[str, Any]]) -> bytes:
    """Each (experiment, arm, metric)'s relative lift with its 95% interval, as a PNG; lifts
    without an interval are left out."""
    from matplotlib.figure import Figure

    rows = [(f"{r['experiment']} {x['arm']} {x['metric']}", x["relative"], x["relative_ci"])
            for r in reports for x in r["lifts"] if x["relative_ci"] is not None]
    fig = Figure(figsize=(8, 1.0 + 0.3 * max(len(rows), 1)))
    ax = fig.add_subplot()
    for i, (_, value, (lo, hi)) in enumerate(rows):
        ax.errorbar([100 * value], [i], xerr=[[100 * (value - lo)], [100 * (hi - value)]], fmt="o",
                    color="tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray", capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("relative lift over the control, % (95% CI)")
    ax.set_title("experiment lifts" if rows else "experiment lifts: none with an interval yet")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def experiment_report(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    with postgres.connect() as conn:
        conn.read_only = True
        reports = reports_of_day(conn, context.partition_key)
    metadata: dict[str, Any] = {
        "experiments": dg.MetadataValue.int(len(reports)),
        "report": dg.MetadataValue.json(reports),
        "chart": dg.MetadataValue.md(chart_markdown(lift_chart(reports), "relative lifts with 95% CIs")),
    }
    for r in reports:
        metadata[r["experiment"]] = dg.MetadataValue.md(markdown(r))
        for x in r["lifts"]:
            if x["metric"] == "ctr" and x["relative"] is not None:
                metadata[f"{r['experiment']}/{x['arm']}/ctr_relative_lift"] = dg.MetadataValue.float(x["relative"])
            if x["metric"] == "ctr" and x["p_value"] is not None:
                metadata[f"{r['experiment']}/{x['arm']}/ctr_p_value"] = dg.MetadataValue.float(x["p_value"])
    failed = {r["experiment"]: r["srm"] for r in reports if not r["srm"]["passed"]}
    check = dg.AssetCheckResult(
        check_name=SAMPLE_RATIO.name,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "experiments_checked": dg.MetadataValue.int(len(reports)),
            "failed": dg.MetadataValue.json(failed),
            "p_values": dg.MetadataValue.json({r["experiment"]: r["srm"]["p_value"] for r in reports}),
        },
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def build_experiment_report_asset() -> dg.AssetsDefinition:
    return dg.asset(
        name="experiment_report",
        partitions_def=report_days(),
        check_specs=[SAMPLE_RATIO],
        description="Each experiment that ran during the day, reported from its start to the end "
        "of the day (cumulative): per arm and source impressions, clicks, CTR, like/share/hide "
        "rates, engagement; lifts over the control with 95% CIs (delta method clustered by user, "
        "CUPED on engagement per user); the sample-ratio check. docs/experiments.md, \"Report\".",
        kinds={"postgres"},
    )(experiment_report)
