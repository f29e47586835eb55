"""`feedrank experiments create|list|start|stop` on a real, migrated PostgreSQL database: the core
validates before anything is written, each command is one transaction, and a failed command
changes nothing stored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

import feedrank
from feedrank.cli import main

def experiment(name: str = "fresh_mix", salt: str = "fm-1", **fields) -> dict:
    return {
        "name": name,
        "salt": salt,
        "arms": [
            {"name": "control", "share": 0.5, "kind": "config", "config": {}},
            {"name": "fresh_only", "share": 0.3, "kind": "sources", "sources": {"fresh": 1}},
            {"name": "random", "share": 0.2, "kind": "random"},
        ],
        **fields,
    }


@pytest.fixture
def cli(fresh_database_url, tmp_path, capsys):
    """``cli(*args) -> (status, stdout, stderr)`` against the test's own database; an argument
    that is not a string (a dict, a list) is written to a JSON file and its path passed."""

    def run(*args):
        argv = ["experiments", args[0], "--database-url", fresh_database_url]
        for i, a in enumerate(args[1:]):
            if not isinstance(a, str):
                path = tmp_path / f"experiment_{i}.json"
                path.write_text(json.dumps(a))
                a = str(path)
            argv.append(a)
        status = main(argv)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def stored(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT name, salt, definition, starts_at, ends_at, stopped_at FROM experiments ORDER BY name"
        ).fetchall()


def test_create_stores_the_normalized_definition(cli, fresh_database_url):
    status, out, _ = cli("create", experiment())
    assert status == 0 and "created experiment 'fresh_mix'" in out
    [(name, salt, definition, starts_at, ends_at, stopped_at)] = stored(fresh_database_url)
    assert (name, salt, starts_at, ends_at, stopped_at) == ("fresh_mix", "fm-1", None, None, None)
    assert definition == feedrank.validate_experiment(experiment())
    # the sources arm holds all four shares, the ones not given at 0
    assert definition["arms"][1]["sources"] == {
        "personalized": 0.0, "fresh": 1.0, "because_you_liked": 0.0, "trending": 0.0}


def test_list_shows_each_experiment_and_its_status(cli):
    assert cli("list")[1].strip() == "no experiments"
    cli("create", experiment())
    cli("create", experiment("later", "l-1", starts_at="2999-01-01T00:00:00Z"))
    status, out, _ = cli("list", "--json")
    assert status == 0
    listed = {e["name"]: e for e in json.loads(out)}
    assert listed["fresh_mix"]["status"] == "draft"
    assert listed["later"]["status"] == "scheduled"
    assert [a["name"] for a in listed["fresh_mix"]["arms"]] == ["control", "fresh_only", "random"]
    table = cli("list")[1]
    assert "fresh_mix\tdraft\tsalt=fm-1" in table and "later\tscheduled" in table


def test_start_sets_starts_at_now_and_stop_sets_stopped_at(cli, fresh_database_url):
    cli("create", experiment(starts_at="2999-01-01T00:00:00Z"))
    status, out, _ = cli("start", "fresh_mix")
    assert status == 0 and "started experiment 'fresh_mix'" in out
    [(_, _, definition, starts_at, _, stopped_at)] = stored(fresh_database_url)
    assert abs(datetime.now(timezone.utc) - starts_at) < timedelta(minutes=1)
    # the definition and the column agree (a migration check holds them so)
    assert datetime.fromisoformat(definition["starts_at"]) == starts_at
    assert stopped_at is None
    assert json.loads(cli("list", "--json")[1])[0]["status"] == "running"
    # starting a running experiment changes nothing
    assert cli("start", "fresh_mix")[0] == 0
    assert stored(fresh_database_url)[0][3] == starts_at

    status, out, _ = cli("stop", "fresh_mix")
    assert status == 0 and "stopped experiment 'fresh_mix'" in out
    stopped_at = stored(fresh_database_url)[0][5]
    assert stopped_at is not None
    assert json.loads(cli("list", "--json")[1])[0]["status"] == "stopped"
    assert cli("stop", "fresh_mix")[0] == 0 and stored(fresh_database_url)[0][5] == stopped_at
    # a stopped experiment is not started again
    status, _, err = cli("start", "fresh_mix")
    assert status == 2 and "was stopped at" in err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (experiment(arms=[{"name": "a", "share": 0.5, "kind": "random"},
                          {"name": "b", "share": 0.4, "kind": "random"}]),
         "arms: shares must sum to 1, got 0.9"),
        (experiment(arms=[{"name": "a", "share": 0.5, "kind": "config", "config": {"top_kk": 3}},
                          {"name": "b", "share": 0.5, "kind": "random"}]),
         "arms[0].config.top_kk: unknown field `top_kk`"),
        (experiment(arms=[{"name": "a", "share": 0.5, "kind": "sources", "sources": {"fresch": 1}},
                          {"name": "b", "share": 0.5, "kind": "random"}]),
         "arms[0].sources.fresch: unknown field `fresch`"),
        (experiment(arms=[{"name": "a", "share": 1.0, "kind": "random"}]),
         "arms: needs at least 2 arms, got 1"),
        (experiment(salt=""), "salt: must not be empty"),
        (experiment(starts_at="2026-12-02T00:00:00Z", ends_at="2026-12-01T00:00:00Z"),
         "ends_at: must be after starts_at"),
        ([1, 2], "experiment: expected a JSON object, got list"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_field_and_stores_nothing(cli, fresh_database_url, bad, message):
    status, _, err = cli("create", bad)
    assert status == 2, err
    assert f"error: {message}" in err, err
    assert stored(fresh_database_url) == []


def test_a_duplicate_salt_or_name_is_refused_and_the_first_is_kept(cli, fresh_database_url):
    assert cli("create", experiment())[0] == 0
    before = stored(fresh_database_url)
    status, _, err = cli("create", experiment("other", "fm-1"))
    assert status == 2
    assert "error: salt: 'fm-1' is the salt of experiment 'fresh_mix' already" in err
    status, _, err = cli("create", experiment("fresh_mix", "fm-2"))
    assert status == 2 and "error: name: an experiment named 'fresh_mix' exists already" in err
    assert stored(fresh_database_url) == before


def test_the_database_refuses_a_second_experiment_on_one_salt_too(cli, fresh_database_url):
    # the constraint behind the CLI's check, for writers that skip it (or race it)
    cli("create", experiment())
    definition = feedrank.validate_experiment(experiment("other", "fm-1"))
    with psycopg.connect(fresh_database_url) as conn, pytest.raises(psycopg.errors.UniqueViolation) as e:
        conn.execute(
            "INSERT INTO experiments (name, salt, definition) VALUES (%s, %s, %s)",
            ("other", "fm-1", psycopg.types.json.Jsonb(definition)),
        )
    assert e.value.diag.constraint_name == "experiments_salt_key"


def test_unknown_experiments_on_start_and_stop_are_errors(cli, fresh_database_url):
    cli("create", experiment())
    before = stored(fresh_database_url)
    for action in ("start", "stop"):
        status, _, err = cli(action, "nope")
        assert status == 2 and "error: name: no experiment named 'nope'" in err
    assert stored(fresh_database_url) == before


def test_start_after_the_end_fails_and_changes_nothing(cli, fresh_database_url):
    cli("create", experiment(starts_at="2999-01-01T00:00:00Z", ends_at="2999-02-01T00:00:00Z"))
    with psycopg.connect(fresh_database_url) as conn:
        # an end already past (written as the CLI would, definition and columns together)
        definition = feedrank.validate_experiment(
            experiment(starts_at="2000-01-01T00:00:00Z", ends_at="2000-02-01T00:00:00Z"))
        definition["starts_at"] = None
        conn.execute(
            "UPDATE experiments SET definition = %s, starts_at = NULL, ends_at = %s",
            (psycopg.types.json.Jsonb(definition), datetime(2000, 2, 1, tzinfo=timezone.utc)),
        )
    before = stored(fresh_database_url)
    status, _, err = cli("start", "fresh_mix")
    assert status == 2 and "error: ends_at: must be after starts_at" in err
    assert stored(fresh_database_url) == before
