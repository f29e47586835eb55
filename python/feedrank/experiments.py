"""``feedrank experiments``: create, list, start and stop experiments (issue 14, part 3).

An experiment is a JSON file (docs/experiments.md shows one) that the core validates
(``feedrank.validate_experiment``, rust/core/src/experiment.rs) before anything is written; it
is stored in PostgreSQL's ``experiments`` table (migration V9), which the API reads to assign
each user an arm. Every command is one transaction: a command that fails changes nothing.

    feedrank experiments create fresh_mix.json
    feedrank experiments start fresh_mix         # starts_at = now (unless already started)
    feedrank experiments list [--json]
    feedrank experiments stop fresh_mix          # stopped_at = now: the API stops labelling
    feedrank experiments report fresh_mix [--json] [--until 2026-12-24T00:00:00Z]

``report`` only reads (a read-only transaction): feedrank.experiment_report computes it.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import feedrank
from feedrank import db
from feedrank.cli import CommandError

__all__ = ["add_arguments", "report_table", "run", "status"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: $DATABASE_URL or the project default)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help, description=help, parents=[common])

    create = action("create", "validate an experiment's JSON file and store it")
    create.add_argument("file", type=Path, metavar="FILE.json")
    listing = action("list", "the stored experiments and their status")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    start = action("start", "start an experiment now (unless it has started)")
    start.add_argument("name")
    stop = action("stop", "stop an experiment now: its users see the usual feed")
    stop.add_argument("name")
    report = action("report", "each arm's numbers and lifts over the control, the sample-ratio check")
    report.add_argument("name")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--until", type=_aware_time, default=None, metavar="ISO",
                        help="the window's end, RFC 3339 with a time zone (default: now)")


def _aware_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a time zone (e.g. {value}Z): {value!r}")
    return t


def run(args: argparse.Namespace) -> int:
    action = {"create": _create, "list": _list, "start": _start, "stop": _stop, "report": _report}[args.action]
    # One transaction: committed when the command returns, rolled back when it raises.
    with db.connect(args.database_url) as conn:
        if args.action == "report":
            conn.read_only = True
        return action(conn, args)


def status(row: dict[str, Any], now: datetime) -> str:
    """``draft`` (no start), ``scheduled``, ``running``, ``ended`` (past ends_at) or ``stopped``."""
    if row["stopped_at"] is not None:
        return "stopped"
    if row["starts_at"] is None:
        return "draft"
    if row["starts_at"] > now:
        return "scheduled"
    if row["ends_at"] is not None and row["ends_at"] <= now:
        return "ended"
    return "running"


def _validated(definition: Any) -> dict[str, Any]:
    if not isinstance(definition, dict):
        raise CommandError(f"experiment: expected a JSON object, got {type(definition).__name__}")
    return feedrank.validate_experiment(definition)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _write(conn: psycopg.Connection, experiment: dict[str, Any], *, insert: bool) -> None:
    values = {
        "name": experiment["name"],
        "salt": experiment["salt"],
        "definition": Jsonb(experiment),
        "starts_at": _time(experiment["starts_at"]),
        "ends_at": _time(experiment["ends_at"]),
    }
    if insert:
        conn.execute(
            "INSERT INTO experiments (name, salt, definition, starts_at, ends_at) "
            "VALUES (%(name)s, %(salt)s, %(definition)s, %(starts_at)s, %(ends_at)s)",
            values,
        )
    else:
        conn.execute(
            "UPDATE experiments SET definition = %(definition)s, starts_at = %(starts_at)s, "
            "ends_at = %(ends_at)s WHERE name = %(name)s",
            values,
        )


def _create(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    try:
        definition = json.loads(args.file.read_text())
    except OSError as e:
        raise CommandError(f"{args.file}: cannot read it: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CommandError(f"{args.file}: not JSON: {e}") from None
    experiment = _validated(definition)
    # Checked first for errors that name the field; the constraints hold under a race too.
    clash = conn.execute(
        "SELECT name, salt = %s FROM experiments WHERE name = %s OR salt = %s",
        (experiment["salt"], experiment["name"], experiment["salt"]),
    ).fetchone()
    if clash is not None:
        other, same_salt = clash
        if same_salt:
            raise CommandError(
                f"salt: {experiment['salt']!r} is the salt of experiment {other!r} already "
                "(experiments on one salt split users identically: give each its own)")
        raise CommandError(f"name: an experiment named {other!r} exists already")
    _write(conn, experiment, insert=True)
    arms = ", ".join(f"{a['name']} ({a['kind']}, {a['share']:.0%})" for a in experiment["arms"])
    print(f"created experiment {experiment['name']!r}: {arms}")
    return 0


def _row(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "SELECT name, definition, starts_at, ends_at, stopped_at FROM experiments "
            "WHERE name = %s FOR UPDATE",
            (name,),
        ).fetchone()
    if row is None:
        raise CommandError(f"name: no experiment named {name!r}")
    return row


def _now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def _start(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    row = _row(conn, args.name)
    now = _now(conn)
    state = status(row, now)
    if state == "stopped":
        raise CommandError(
            f"name: experiment {args.name!r} was stopped at {row['stopped_at'].isoformat()}; a "
            "stopped experiment is not restarted (create a new one, with a new salt)")
    if state in ("running", "ended"):
        print(f"experiment {args.name!r} started at {row['starts_at'].isoformat()} already ({state})")
        return 0
    # Validated again with its new start: an ends_at already past makes this an error.
    experiment = _validated({**row["definition"], "starts_at": now.isoformat()})
    _write(conn, experiment, insert=False)
    print(f"started experiment {args.name!r} at {now.isoformat()}")
    return 0


def _stop(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    row = _row(conn, args.name)
    if row["stopped_at"] is not None:
        print(f"experiment {args.name!r} was stopped at {row['stopped_at'].isoformat()} already")
        return 0
    now = _now(conn)
    conn.execute("UPDATE experiments SET stopped_at = %s WHERE name = %s", (now, args.name))
    print(f"stopped experiment {args.name!r} at {now.isoformat()}")
    return 0


def _list(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    now = _now(conn)
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(
            "SELECT name, salt, definition, starts_at, ends_at, stopped_at, created_at "
            "FROM experiments ORDER BY created_at, name"
        ).fetchall()
    iso = lambda t: None if t is None else t.isoformat()  # noqa: E731
    if args.json:
        print(json.dumps([
            {"name": r["name"], "salt": r["salt"], "status": status(r, now),
             "starts_at": iso(r["starts_at"]), "ends_at": iso(r["ends_at"]),
             "stopped_at": iso(r["stopped_at"]), "created_at": iso(r["created_at"]),
             "arms": r["definition"]["arms"]}
            for r in rows
        ], indent=2))
        return 0
    if not rows:
        print("no experiments")
        return 0
    for r in rows:
        arms = ", ".join(f"{a['name']} {a['kind']} {a['share']:.0%}" for a in r["definition"]["arms"])
        print(f"{r['name']}\t{status(r, now)}\tsalt={r['salt']}\tstarts_at={iso(r['starts_at'])}"
              f"\tends_at={iso(r['ends_at'])}\tarms: {arms}")
    return 0


def _report(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    from feedrank import experiment_report

    try:
        result = experiment_report.report(conn, args.name, until=args.until)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(report_table(result))
    return 0


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _interval(values: list[float] | None, spec: str) -> str:
    return "-" if values is None else f"[{values[0]:{spec}}, {values[1]:{spec}}]"


def report_table(result: dict[str, Any]) -> str:
    """The report as text: one table of the arms, one of the lifts over the control, the
    sample-ratio line."""
    window = result["window"]
    lines = [
        f"experiment {result['experiment']} (salt {result['salt']}), control: {result['control']}, "
        f"window {window['from']} .. {window['until']}",
        "",
        "arm\tshare\tusers\timpressions\tclicks\tctr\tlikes\tlike_rate\tshares\tshare_rate"
        "\thides\thide_rate\tengaged_users\tengagement_per_user",
    ]
    for a in result["arms"]:
        lines.append("\t".join([
            a["arm"], f"{a['share']:.0%}", str(a["users"]), str(a["impressions"]),
            str(a["clicks"]), f"{a['ctr']:.4f}", str(a["likes"]), f"{a['like_rate']:.4f}",
            str(a["shares"]), f"{a['share_rate']:.4f}", str(a["hides"]), f"{a['hide_rate']:.4f}",
            str(a["engaged_users"]), f"{a['engagement_per_user']:.4f}",
        ]))
        for source, s in a["sources"].items():
            lines.append(f"  {source}\t\t\t{s['impressions']}\t{s['clicks']}\t{s['ctr']:.4f}")
    lines += ["", "arm\tmetric\tcontrol\ttreatment\tabsolute [95% CI]\trelative [95% CI]\tp\tnote"]
    for lift in result["lifts"]:
        note = lift["reason"] or ""
        if lift.get("cuped"):
            c = lift["cuped"]
            note = (f"CUPED: {_number(c['absolute'], '+.4f')} {_interval(c['absolute_ci'], '+.4f')}, "
                    f"p {_number(c['p_value'], '.4g')}, variance reduced by {_number(c['variance_reduction'], '.0%')}")
        lines.append("\t".join([
            lift["arm"], lift["metric"], _number(lift["control"], ".4f"), _number(lift["treatment"], ".4f"),
            f"{_number(lift['absolute'], '+.4f')} {_interval(lift['absolute_ci'], '+.4f')}",
            f"{_number(lift['relative'], '+.1%')} {_interval(lift['relative_ci'], '+.1%')}",
            _number(lift["p_value"], ".4g"), note,
        ]))
    srm = result["srm"]
    users = ", ".join(f"{arm} {n}" for arm, n in srm["users"].items())
    lines += ["", f"sample ratio: {'passed' if srm['passed'] else 'FAILED'} (chi2 {srm['chi2']:.3f}, "
              f"df {srm['df']}, p {srm['p_value']:.4g}, threshold {srm['threshold']}; users: {users})"]
    return "\n".join(lines)
