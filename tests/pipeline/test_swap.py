"""The PostgreSQL swap protocol (dagster_pipeline/swap.py) on its own, against a real database: a
run's table gets the keys, indexes and foreign keys the catalog gives user_recommendations (a
migration's new index included) before it is attached, rows orphaned since the load are dropped,
and a run replaces the previous one of its shard or, failing, leaves it served."""

import logging
import random
import threading
import time

import polars as pl
import psycopg
import pytest

from dagster_pipeline import swap
from dagster_pipeline.resources import PostgresResource
from dagster_pipeline.timing import Timer
from feedrank import db

N_USERS, N_POSTS, PER_USER = 20, 60, 5
COLUMNS = ("user_id", "post_id", "score", "reason")
LOG = logging.getLogger("test_swap")


@pytest.fixture
def world(fresh_database_url):
    """Users and posts in a fresh database; each user's PER_USER posts of a run, drawn at random."""
    with db.connect(fresh_database_url, autocommit=True) as conn:
        users = [r[0] for r in conn.execute(
            "INSERT INTO users (username) SELECT 'swap_' || i FROM generate_series(1, %s) i RETURNING id::text",
            (N_USERS,),
        ).fetchall()]
        posts = [r[0] for r in conn.execute(
            "INSERT INTO posts (user_id, content) SELECT (%s::uuid[])[1 + i %% %s], 'post ' || i "
            "FROM generate_series(1, %s) i RETURNING id::text",
            (users, N_USERS, N_POSTS),
        ).fetchall()]
    rng = random.Random(3)
    picks = {u: rng.sample(posts, PER_USER) for u in users}
    return fresh_database_url, picks


def frames(picks: dict[str, list[str]]):
    """``frame_of`` for swap: the rows of users lo..hi (in picks' order), in COLUMNS."""
    users = list(picks)

    def frame_of(lo: int, hi: int, timer: Timer) -> pl.DataFrame:
        rows = [(u, p, float(PER_USER - r), "similar_users") for u in users[lo:hi] for r, p in enumerate(picks[u])]
        return pl.DataFrame(rows, schema=list(COLUMNS), orient="row")

    return frame_of


def chunks(n: int, size: int = 7) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def loaded_run(url: str, picks, conn) -> tuple[PostgresResource, swap.Run, int]:
    postgres = PostgresResource(database_url=url, copy_connections=2)
    run = swap.start_run(conn, "00-of-01", "test-run", {"top_k": PER_USER}, 48)
    rows = swap.copy_rows(postgres, run, COLUMNS, chunks(len(picks)), frames(picks), Timer())
    return postgres, run, rows


def _index_methods(conn, table: str) -> set[str]:
    """Every index of ``table`` (constraint-owned ones too), as its USING part."""
    return {
        r[0]
        for r in conn.execute(
            "SELECT substring(pg_get_indexdef(indexrelid) FROM ' (USING .*)$') FROM pg_index "
            "WHERE indrelid = %s::regclass",
            (table,),
        ).fetchall()
    }


def _foreign_keys(conn, table: str) -> dict[str, bool]:
    """Definition -> validated, of ``table``'s foreign keys."""
    return dict(
        conn.execute(
            "SELECT pg_get_constraintdef(oid), convalidated FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'f'",
            (table,),
        ).fetchall()
    )


def test_a_migrations_new_index_is_built_on_the_run_table_before_it_is_attached(world):
    url, picks = world
    with psycopg.connect(url) as conn:
        # as a migration would add it: the partitioned parent gets a new index
        conn.execute("CREATE INDEX idx_user_recommendations_reason ON user_recommendations (reason, score DESC)")
        conn.commit()
        postgres, run, rows = loaded_run(url, picks, conn)
        assert rows == N_USERS * PER_USER
        assert _index_methods(conn, run.table) == set(), "the load table starts bare"
        assert swap.constrain(postgres, run.table, Timer()) == 0

        parent = _index_methods(conn, "user_recommendations")
        assert "USING btree (reason, score DESC)" in parent
        assert _index_methods(conn, run.table) == parent, "every index of the parent, built before ATTACH"
        assert _foreign_keys(conn, run.table) == {d: True for d in _foreign_keys(conn, "user_recommendations")}
        assert len(_foreign_keys(conn, run.table)) == 3

        swap.attach(conn, run, N_USERS, rows, LOG, Timer())
        # ATTACH adopted the run table's indexes (each one now a child of a parent index) and
        # built none of its own
        adopted = conn.execute(
            "SELECT count(*), count(h.inhparent) FROM pg_index i "
            "LEFT JOIN pg_inherits h ON h.inhrelid = i.indexrelid WHERE i.indrelid = %s::regclass",
            (run.table,),
        ).fetchone()
        assert adopted == (len(parent), len(parent))
        status = conn.execute("SELECT status, rows_count FROM recommendation_runs WHERE id = %s", (run.id,)).fetchone()
        assert status == ("complete", N_USERS * PER_USER)
    assert len(db.current_recommendations(url)) == N_USERS


def test_rows_naming_a_post_deleted_after_the_load_are_dropped_and_every_key_validated(world):
    url, picks = world
    with psycopg.connect(url) as conn:
        postgres, run, rows = loaded_run(url, picks, conn)
        # deleted between the snapshot and the keys: no cascade can reach the bare table yet
        gone = next(iter(picks.values()))[0]
        conn.execute("DELETE FROM posts WHERE id = %s", (gone,))
        conn.commit()
        naming_it = sum(gone in ps for ps in picks.values())
        assert swap.constrain(postgres, run.table, Timer()) == naming_it > 0
        assert all(_foreign_keys(conn, run.table).values())
        left = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE post_id = %s) FROM {run.table}", (gone,)
        ).fetchone()
        assert left == (rows - naming_it, 0)


def _write(url: str, picks, frame_of=None) -> swap.Written:
    postgres = PostgresResource(database_url=url, copy_connections=2)
    return swap.write_run(
        postgres, shard="00-of-01", dagster_run_id="test-run", config={"top_k": PER_USER},
        expires_after_hours=48, users=len(picks), columns=COLUMNS, chunks=chunks(len(picks)),
        frame_of=frame_of or frames(picks), log=LOG, timer=Timer(),
    )


def _run_tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'user\\_recommendations\\_run\\_%'"
        ).fetchall()}


def test_a_run_replaces_the_previous_one_of_its_shard_and_a_failed_run_leaves_it_served(world):
    url, picks = world
    first = _write(url, picks)
    second = _write(url, {u: list(reversed(ps)) for u, ps in picks.items()})
    assert second.runs_removed == 1 and second.rows == N_USERS * PER_USER
    assert _run_tables(url) == {second.run.table}, "the superseded run's table is dropped"
    served = db.current_recommendations(url)
    assert {items[0][2] for items in served.values()} == {second.run.id} != {first.run.id}

    def breaks_mid_way(lo: int, hi: int, timer: Timer) -> pl.DataFrame:
        if lo > 0:
            raise RuntimeError("the scores went away (test)")
        return frames(picks)(lo, hi, timer)

    with pytest.raises(RuntimeError, match="went away"):
        _write(url, picks, breaks_mid_way)
    assert db.current_recommendations(url) == served
    assert _run_tables(url) == {second.run.table}, "the failed run's table is dropped"
    with psycopg.connect(url) as conn:
        statuses = conn.execute("SELECT id, status FROM recommendation_runs ORDER BY id").fetchall()
    assert [s for _, s in statuses] == ["complete", "failed"]



def _attach_while(url: str, picks, conn, first, then) -> list[str]:
    """Loads and constrains a run on ``conn``, runs ``first()``, starts the run's attach in a
    thread, waits until the attach waits for a lock, runs ``then()``; the attach must then
    complete. Returns the warnings it logged (one per attempt that gave up)."""
    postgres, run, rows = loaded_run(url, picks, conn)
    swap.constrain(postgres, run.table, Timer())
    first()
    done: list[BaseException | None] = []
    warnings: list[str] = []
    attach_pid = conn.info.backend_pid

    class Recording:
        def warning(self, msg: str) -> None:
            warnings.append(msg)

    def attach() -> None:
        try:
            swap.attach(conn, run, N_USERS, rows, Recording(), Timer())
            done.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            done.append(e)

    thread = threading.Thread(target=attach)
    thread.start()
    with psycopg.connect(url, autocommit=True) as watch:
        deadline = time.monotonic() + 30
        while watch.execute(
            "SELECT wait_event_type IS DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = %s",
            (attach_pid,),
        ).fetchone()[0]:
            assert time.monotonic() < deadline and thread.is_alive(), done
            time.sleep(0.05)
    then()
    thread.join(timeout=60)
    assert done == [None], f"the attach failed: {done}"
    status = conn.execute("SELECT status FROM recommendation_runs WHERE id = %s", (run.id,)).fetchone()
    assert status == ("complete",)
    return warnings


@pytest.mark.parametrize("named", ["posts", "users", "recommendation_runs"])
def test_an_attach_caught_in_a_deadlock_with_a_reader_tries_again_and_completes(world, named, monkeypatch):
    """ATTACH locks the default partition, then the tables the foreign keys reference; a reader
    that read one of those and then reads the recommendations takes them in the opposite order.
    The server aborts the one that waited first (here the attach): in a clean-clone CI run that
    failed the run. Now the attach tries again, and the reader is served."""
    url, picks = world
    # The server aborts the session whose deadlock_timeout (default 1 s) runs out first after
    # the cycle closes, and a session checks once. A busy machine once let more than 1 s pass
    # between the attach's wait and the reader's query: the attach's check found no cycle yet,
    # the reader's found it, and the reader was aborted (a clean-clone CI run, 2026-12-04). The
    # attach checks after 4 s here and the reader after 60 s; the attach's lock timeout is raised
    # past both, so that the attach gives up for the deadlock and not for the wait.
    monkeypatch.setattr(swap, "LOCK_TIMEOUT", "20s")
    with psycopg.connect(url) as conn, psycopg.connect(url) as reader:
        for session, timeout in ((conn, "4s"), (reader, "60s")):
            session.execute(f"SET deadlock_timeout = '{timeout}'")
            session.commit()

        def read_the_recommendations() -> None:
            reader.execute("SELECT count(*) FROM user_recommendations")
            reader.commit()

        warnings = _attach_while(
            url, picks, conn, lambda: reader.execute(f"SELECT count(*) FROM {named}"), read_the_recommendations
        )
        assert len(warnings) == 1 and "deadlock" in warnings[0], warnings


def test_an_attach_waits_for_another_runs_clean_up_instead_of_deadlocking_with_it(world):
    """A clean-up reads the runs, then the recommendations, in one transaction (the order that
    deadlocks with an attach); the swap lock makes the attach wait for it instead."""
    url, picks = world
    with psycopg.connect(url) as conn, psycopg.connect(url) as cleaner:

        def start_cleaning_up() -> None:
            cleaner.execute(swap.SWAP_LOCK.format("pg_advisory_lock"))
            cleaner.execute("SELECT count(*) FROM recommendation_runs")

        def finish_cleaning_up() -> None:
            cleaner.execute("SELECT count(*) FROM user_recommendations")
            cleaner.commit()
            cleaner.execute(swap.SWAP_LOCK.format("pg_advisory_unlock"))
            cleaner.commit()

        assert _attach_while(url, picks, conn, start_cleaning_up, finish_cleaning_up) == [], "it had to try again"
