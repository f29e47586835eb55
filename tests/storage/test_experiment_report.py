"""The experiment report read from a real, migrated PostgreSQL database (feedrank.experiment_report
.report and `feedrank experiments report`): served pages and events written by hand with known
counts, checked exactly; unknown, unstarted and empty experiments."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest

import feedrank
from feedrank.cli import main
from feedrank.experiment_report import compare, cuped_theta, ratio_estimate, report

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
UNTIL = datetime(2026, 11, 3, tzinfo=timezone.utc)
SOURCES = {"personalized": 1, "fresh": 2, "because_you_liked": 3, "trending": 4, "fallback": 5}


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=timezone.utc) if day > 0 else START + timedelta(days=day - 1, hours=hour)


def create_experiment(conn, name: str, salt: str, starts_at: datetime | None, shares=(0.5, 0.5)) -> None:
    """As `feedrank experiments create` stores it (definition and columns agree)."""
    definition = feedrank.validate_experiment({
        "name": name, "salt": salt, "starts_at": None if starts_at is None else starts_at.isoformat(),
        "arms": [{"name": "control", "share": shares[0], "kind": "config", "config": {}},
                 {"name": "treat", "share": shares[1], "kind": "sources", "sources": {"fresh": 1}}],
    })
    conn.execute(
        "INSERT INTO experiments (name, salt, definition, starts_at) VALUES (%s, %s, %s, %s)",
        (name, salt, psycopg.types.json.Jsonb(definition), starts_at),
    )


class Log:
    """Writes users, posts, served pages and events; remembers each page's request id."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.users = {}
        self.posts = [uuid.uuid4() for _ in range(12)]
        author = self.user("author")
        for p in self.posts:
            conn.execute("INSERT INTO posts (id, user_id, content) VALUES (%s, %s, 'x')", (p, author))
        # partitions of served_pages for the days used here
        conn.execute("SELECT served_pages_maintain(%s, 10, 3650)", (START.date() - timedelta(days=5),))

    def user(self, name: str) -> uuid.UUID:
        if name not in self.users:
            self.users[name] = uuid.uuid4()
            self.conn.execute("INSERT INTO users (id, username) VALUES (%s, %s)", (self.users[name], name))
        return self.users[name]

    def page(self, user: str, served_at: datetime, sources: list[str], arms: list[str], first_position: int = 0) -> uuid.UUID:
        request_id = uuid.uuid4()
        posts = self.posts[first_position:first_position + len(sources)]
        self.conn.execute(
            "INSERT INTO served_pages (request_id, user_id, first_position, post_ids, source_codes, "
            "reason_codes, arms, served_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (request_id, self.user(user), first_position, b"".join(p.bytes for p in posts),
             bytes(SOURCES[s] for s in sources), bytes(len(sources)), arms, served_at),
        )
        return request_id

    def event(self, user: str, kind: str, created_at: datetime, request_id=None, position=None) -> None:
        self.conn.execute(
            "INSERT INTO user_interactions (user_id, post_id, interaction_type, created_at, request_id, position) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (self.user(user), self.posts[position or 0], kind, created_at, request_id, position),
        )


@pytest.fixture
def conn(fresh_database_url):
    with psycopg.connect(fresh_database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def logged(conn) -> Log:
    """Experiment ``exp`` (control / treat, 50/50, started 2026-11-01) with hand-written traffic;
    the expected numbers are in the test below."""
    create_experiment(conn, "exp", "exp-1", START)
    log = Log(conn)
    a = log.page("u1", at(1, 10), ["personalized", "fresh", "personalized"], ["exp:control"])
    b = log.page("u1", at(2), ["trending", "fallback"], ["exp:control"], first_position=3)
    c = log.page("u2", at(1), ["personalized"] * 4, ["exp:control"])
    d = log.page("u3", at(2), ["fresh", "fresh"], ["other:x", "exp:control"])
    e = log.page("u4", at(1), ["personalized", "fresh", "trending"], ["exp:treat"])
    f = log.page("u5", at(2), ["personalized", "personalized"], ["exp:treat"])
    g = log.page("u5", at(4), ["personalized", "personalized"], ["exp:treat"])  # after the window
    log.page("u6", at(1), ["personalized"], ["other:x"])  # another experiment's user
    h = log.page("u7", at(0, 12), ["fresh", "fresh"], ["exp:control"])  # before the start
    # u1: one impression clicked twice (counts once) and liked; the fallback post at position 4
    log.event("u1", "click", at(1, 11), a, 0)
    log.event("u1", "click", at(1, 12), a, 0)
    log.event("u1", "like", at(1, 12), a, 0)
    log.event("u1", "click", at(2, 13), b, 4)
    # u2: a hide; a click after the window's end
    log.event("u2", "hide", at(1, 13), c, 2)
    log.event("u2", "click", at(3, 1), c, 1)
    log.event("u3", "share", at(2, 14), d, 1)
    log.event("u4", "click", at(1, 13), e, 1)
    log.event("u4", "like", at(1, 14), e, 2)
    # not counted: u4 on u5's page, a position off the page, a view, a page after the window,
    # a page before the start
    log.event("u4", "click", at(2, 13), f, 0)
    log.event("u5", "click", at(2, 13), f, 5)
    log.event("u5", "view", at(2, 13), f, 0)
    log.event("u5", "click", at(4, 13), g, 0)
    log.event("u7", "click", at(0, 13), h, 0)
    # the pre-period (2 days before the start: the window is 2 days long): u1 2 clicks, u4 a
    # share; u1's like 3 days before is outside it, a hide is no engagement
    log.event("u1", "click", at(-1, 12))
    log.event("u1", "click", at(0, 1))
    log.event("u1", "like", at(-2, 12))
    log.event("u4", "share", at(0, 12))
    log.event("u5", "hide", at(0, 12))
    return log


def test_the_report_counts_what_was_served_and_attributed_in_the_window(conn, logged):
    result = report(conn, "exp", until=UNTIL)
    json.dumps(result, allow_nan=False)
    assert result["control"] == "control" and result["salt"] == "exp-1"
    assert result["window"] == {"from": START.isoformat(), "until": UNTIL.isoformat(),
                                "pre_period": {"from": (START - timedelta(days=2)).isoformat(), "until": START.isoformat()}}
    control, treat = result["arms"]
    assert {k: control[k] for k in ("arm", "share", "users", "impressions", "clicks", "likes", "shares", "hides", "engaged_users")} == {
        "arm": "control", "share": 0.5, "users": 3, "impressions": 11, "clicks": 2, "likes": 1, "shares": 1, "hides": 1,
        "engaged_users": 2}
    assert control["ctr"] == pytest.approx(2 / 11) and control["hide_rate"] == pytest.approx(1 / 11)
    assert control["engagement_per_user"] == pytest.approx(4 / 3)
    assert control["sources"] == {
        "fallback": {"impressions": 1, "clicks": 1, "ctr": 1.0},
        "fresh": {"impressions": 3, "clicks": 0, "ctr": 0.0},
        "personalized": {"impressions": 6, "clicks": 1, "ctr": pytest.approx(1 / 6)},
        "trending": {"impressions": 1, "clicks": 0, "ctr": 0.0},
    }
    assert {k: treat[k] for k in ("users", "impressions", "clicks", "likes", "shares", "hides", "engaged_users")} == {
        "users": 2, "impressions": 5, "clicks": 1, "likes": 1, "shares": 0, "hides": 0, "engaged_users": 1}
    assert treat["sources"] == {
        "fresh": {"impressions": 1, "clicks": 1, "ctr": 1.0},
        "personalized": {"impressions": 3, "clicks": 0, "ctr": 0.0},
        "trending": {"impressions": 1, "clicks": 0, "ctr": 0.0},
    }
    # the lifts are the pure functions' on these per-user numbers (users u1 u2 u3 / u4 u5)
    ctr = next(x for x in result["lifts"] if x["metric"] == "ctr")
    expected = compare(ratio_estimate(np.array([2, 0, 0]), np.array([5, 4, 2])),
                       ratio_estimate(np.array([1, 0]), np.array([3, 2])))
    assert ctr == {"arm": "treat", "metric": "ctr", **expected, "cuped": None}
    engagement = next(x for x in result["lifts"] if x["metric"] == "engagement_per_user")
    theta = cuped_theta([np.array([3, 0, 1]), np.array([2, 0])], [np.array([2, 0, 0]), np.array([1, 0])])
    assert engagement["cuped"]["theta"] == pytest.approx(theta)
    assert result["srm"]["users"] == {"control": 3, "treat": 2} and result["srm"]["passed"]


def test_an_unknown_experiment_is_an_error_naming_it_and_changes_nothing(conn, logged, fresh_database_url, capsys):
    def snapshot():
        return (conn.execute("SELECT name, definition, starts_at, stopped_at FROM experiments ORDER BY name").fetchall(),
                conn.execute("SELECT count(*) FROM served_pages").fetchone())

    before = snapshot()
    with pytest.raises(ValueError, match="^name: no experiment named 'nope'$"):
        report(conn, "nope")
    assert main(["experiments", "report", "nope", "--database-url", fresh_database_url]) == 2
    assert "error: name: no experiment named 'nope'" in capsys.readouterr().err
    assert snapshot() == before


def test_a_never_started_experiment_and_a_window_before_the_start_are_errors(conn, logged):
    create_experiment(conn, "draft", "draft-1", None)
    with pytest.raises(ValueError, match="^name: experiment 'draft' has not been started"):
        report(conn, "draft")
    with pytest.raises(ValueError, match="^until: .* is not after the start of experiment 'exp'"):
        report(conn, "exp", until=START - timedelta(days=1))


def test_an_experiment_without_traffic_reports_zeros_and_null_lifts(conn, logged):
    create_experiment(conn, "quiet", "quiet-1", START)
    result = report(conn, "quiet", until=UNTIL)
    json.dumps(result, allow_nan=False)
    assert [(a["users"], a["impressions"], a["ctr"]) for a in result["arms"]] == [(0, 0, 0.0), (0, 0, 0.0)]
    assert all(x["absolute"] is None and x["reason"] for x in result["lifts"])
    assert result["srm"]["passed"]


def test_the_cli_prints_the_report_as_json_and_as_a_table(conn, logged, fresh_database_url, capsys):
    argv = ["experiments", "report", "exp", "--database-url", fresh_database_url, "--until", UNTIL.isoformat()]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(report(conn, "exp", until=UNTIL)))
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "experiment exp (salt exp-1), control: control" in table
    assert "\ncontrol\t50%\t3\t11\t2\t0.1818\t" in table
    assert "sample ratio: passed" in table
    with pytest.raises(SystemExit) as exit:  # argparse's usage error
        main([*argv[:-1], "2026-11-03T00:00:00"])
    assert exit.value.code == 2 and "--until: needs a time zone" in capsys.readouterr().err


def test_a_broken_split_fails_the_sample_ratio_check(conn):
    create_experiment(conn, "split", "split-1", START)
    log = Log(conn)
    conn.execute(
        "INSERT INTO served_pages (request_id, user_id, first_position, post_ids, source_codes, reason_codes, arms, served_at) "
        "SELECT gen_random_uuid(), gen_random_uuid(), 0, %s, '\\x01', '\\x00', "
        "ARRAY[CASE WHEN i <= 10000 THEN 'split:control' ELSE 'split:treat' END], %s "
        "FROM generate_series(1, 19000) i",
        (log.posts[0].bytes, at(1)),
    )
    srm = report(conn, "split", until=UNTIL)["srm"]
    assert srm["users"] == {"control": 10000, "treat": 9000}
    assert not srm["passed"] and srm["p_value"] < 0.001
