"""Swapping a run's recommendations into PostgreSQL: one partition of ``user_recommendations`` per
recommendation run (migration V6), built aside and attached in the transaction that completes
the run.

Maintaining the parent's indexes row by row while COPYing 20 million rows, and deleting the
previous run's 20 million rows afterwards, was most of the pipeline's time; so a run
(:func:`write_run`):

1. inserts its ``recommendation_runs`` row (``building``) and creates ``user_recommendations_run_<id>``,
   a bare table shaped like the parent (its defaults and CHECK constraints, and
   ``CHECK (run_id = <id>)``);
2. COPYs its rows into it over ``PostgresResource.copy_connections`` connections (no index,
   trigger or foreign key yet: parsing and appending only);
3. builds the parent's keys and indexes on it in bulk, ``copy_connections`` at a time, and
   ``ANALYZE``s it;
4. adds the parent's foreign keys ``NOT VALID`` (a brief lock on the referenced tables), then
   ``VALIDATE``s them (a scan that does not block writes to them); rows naming a row deleted since
   the snapshot are dropped and the key validated again;
5. in one transaction, ``ATTACH PARTITION`` (which adopts those indexes and keys instead of
   building its own) and the flip of the run to ``complete``: readers see the old run or the new
   one, never a mix;
6. drops the superseded runs' tables (a catalog change, not millions of deletes), then their rows.

The keys, indexes and foreign keys of step 3-4 are read from the catalog (``feedrank.db``), never
retyped: a migration that adds an index to ``user_recommendations`` gets it built here in bulk,
not by the ATTACH under its exclusive lock.

A failure before step 5 marks the run ``failed`` and drops its table; a killed process leaves a
``building`` run whose table a clean-up a day later drops, and tables whose run is gone are
dropped too. DDL waits at most :data:`LOCK_TIMEOUT` for a lock: the flip tries
:data:`ATTACH_ATTEMPTS` times (a deadlock with a reader counts as one), the clean-up leaves a table
a long reader holds to the next run.

A small run (the incremental refresh's, ``own_partition=False``) skips steps 3-4: in the
transaction that completes it, its rows move from the load table into the parent's default
partition (which has every index and key already), and the load table is dropped. A partition per
refresh run would leave hundreds of partitions by the end of a day, each one more index probe for
every reader of a user's list. The flip can run a caller's ``before_flip`` in the same
transaction (the refresh writes its users' profiles there, and refuses, by raising
:class:`Refused`, to replace a run built from newer data).

A run names its serving model (``model_id``, migration V7). The clean-up also removes refresh
runs that no user is served from any more, and models no complete or building run names.
"""

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl
import psycopg
from feedrank import db
from psycopg import sql
from psycopg.types.json import Jsonb

from dagster_pipeline.bulk import copy_parallel, parallel
from dagster_pipeline.partitions import REFRESH_SHARD
from dagster_pipeline.resources import PostgresResource
from dagster_pipeline.timing import Timer

# The partitioned table; its keys, indexes and foreign keys are read from the catalog by this name.
PARENT = "user_recommendations"
# DDL waits at most this long for a lock: the flip then tries again (up to ATTACH_ATTEMPTS times
# in all), the clean-up leaves a superseded run for the next run.
LOCK_TIMEOUT = "5s"
ATTACH_ATTEMPTS = 3
# The advisory lock a run's flip (attach or merge) and a run's clean-up take, so that two runs'
# flips and clean-ups never interleave (see :func:`_flip` and :func:`clean_up`).
SWAP_LOCK = "SELECT {}(hashtext('feedrank.swap'))"


class Log(Protocol):
    def warning(self, msg: str) -> Any: ...


def load_table(run_id: int) -> str:
    """The table a run's rows are loaded into, then attached as its partition."""
    return f"user_recommendations_run_{int(run_id)}"


def lock_timeout(conn: psycopg.Connection) -> None:
    """This transaction's DDL waits at most LOCK_TIMEOUT for a lock."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))


def drop_run_table(conn: psycopg.Connection, table: str) -> None:
    """Drops a run's table (a partition or not) in the caller's transaction. The parent is locked
    first: DROP alone locks the partition, then the parent, the reverse of a reader's order
    (parent, then partitions), and a reader in between made a deadlock."""
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return
    conn.execute("LOCK TABLE user_recommendations IN ACCESS EXCLUSIVE MODE")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


class Refused(Exception):
    """Raised by a ``before_flip`` hook: the run must not become the one served (the message says
    why). :func:`write_run` then removes it as it does a failed run, and reports the reason."""


@dataclass(frozen=True)
class Run:
    """A recommendation run being written: its id, its load table and the times of its rows."""

    id: int
    table: str
    generated_at: float  # Unix seconds: the run's start
    expires_at: str  # ISO 8601 UTC: when its rows expire

    @property
    def generated_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.generated_at))


def start_run(
    conn: psycopg.Connection,
    shard: str,
    dagster_run_id: str,
    config: dict[str, Any],
    expires_after_hours: int,
    model_id: int | None = None,
) -> Run:
    """Step 1: the run's row (``building``, its ``config`` stored as given, the serving model it
    was built with) and its bare table."""
    with conn.transaction():
        run_id, generated_at, expires_at = conn.execute(
            "INSERT INTO recommendation_runs (status, shard, dagster_run_id, config, model_id) "
            "VALUES ('building', %s, %s, %s, %s) "
            "RETURNING id, extract(epoch FROM started_at)::float8, "
            "to_char((started_at + make_interval(hours => %s)) AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            (shard, dagster_run_id, Jsonb(config), model_id, int(expires_after_hours)),
        ).fetchone()
        run = Run(int(run_id), load_table(run_id), float(generated_at), expires_at)
        # The id is new, so a table of that name is an orphan: its run was removed without it
        # (e.g. `feedrank demo-data --reset` truncates the runs and restarts their ids).
        lock_timeout(conn)
        drop_run_table(conn, run.table)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {t} (LIKE user_recommendations INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                "CHECK (run_id = {r}))"
            ).format(t=sql.Identifier(run.table), r=sql.Literal(run.id))
        )
    return run


# Renders the rows of users [lo, hi) as a frame whose columns are the row columns given to
# copy_rows, in that order; the timer is the calling thread's own.
RowFrames = Callable[[int, int, Timer], pl.DataFrame]


def copy_rows(
    postgres: PostgresResource,
    run: Run,
    columns: Sequence[str],
    chunks: Sequence[tuple[int, int]],
    frame_of: RowFrames,
    timer: Timer,
) -> int:
    """Step 2: COPYs the chunks' rows (plus the run's ``run_id``, ``generated_at`` and
    ``expires_at``) into the run's table over ``postgres.copy_connections`` connections at once
    (``bulk.copy_parallel``). Returns the rows written."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(run.table),
        sql.SQL(", ").join(map(sql.Identifier, ("run_id", *columns, "generated_at", "expires_at"))),
    )

    def render(lo: int, hi: int, local: Timer) -> tuple[memoryview, int]:
        frame = frame_of(lo, hi, local)
        with local.step("rows to csv (polars)"):
            buf = io.BytesIO()
            frame.select(
                pl.lit(run.id).alias("run_id"),
                *columns,
                pl.lit(run.generated_iso).alias("generated_at"),
                pl.lit(run.expires_at).alias("expires_at"),
            ).write_csv(buf, include_header=False)
        return buf.getbuffer(), frame.height

    return copy_parallel(postgres, statement, chunks, render, timer)


def constrain(postgres: PostgresResource, table: str, timer: Timer) -> int:
    """Steps 3-4: the parent's keys, indexes and foreign keys on a loaded table, read from the
    catalog; rows naming a row deleted since the snapshot are dropped (returns how many). Once a
    foreign key exists, deletes cascade into the table as into any partition, so after the one
    clean-up below no orphan can appear."""
    t = sql.Identifier(table)
    with postgres.connect() as conn:
        keys = db.table_constraints(conn, PARENT, ("p", "u"))
        indexes = db.table_indexes(conn, PARENT)
        foreign_keys = db.table_constraints(conn, PARENT, ("f",))
    with timer.step("build indexes", "io"):
        # Keys and indexes unnamed: PostgreSQL names them after the table, as ATTACH would.
        parallel(
            postgres,
            [sql.SQL("ALTER TABLE {} ADD {}").format(t, sql.SQL(k.definition)) for k in keys]
            + [index.create(table, named=False) for index in indexes],
        )
        with postgres.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}").format(t))
    dropped = 0
    names = [f"{table}_{'_'.join(fk.columns)}_fkey" for fk in foreign_keys]
    with timer.step("foreign keys", "io"), postgres.connect() as conn:
        with conn.transaction():
            lock_timeout(conn)
            for fk, name in zip(foreign_keys, names):
                conn.execute(fk.add(table, name=name, not_valid=True))
        for fk, name in zip(foreign_keys, names):
            validate = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(t, sql.Identifier(name))
            try:
                with conn.transaction():
                    conn.execute(validate)
            except psycopg.errors.ForeignKeyViolation:
                # deleted since the snapshot, before the key existed: drop those rows
                with conn.transaction():
                    dropped += conn.execute(_delete_orphans(table, fk)).rowcount
                    conn.execute(validate)
    return dropped


def _delete_orphans(table: str, fk: db.Constraint) -> sql.Composed:
    """Deletes the rows of ``table`` whose ``fk`` columns name no row of the referenced table."""
    match = sql.SQL(" AND ").join(
        sql.SQL("x.{} = r.{}").format(sql.Identifier(ref), sql.Identifier(col))
        for col, ref in zip(fk.columns, fk.referenced_columns)
    )
    return sql.SQL("DELETE FROM {t} r WHERE NOT EXISTS (SELECT 1 FROM {p} x WHERE {m})").format(
        t=sql.Identifier(table), p=sql.SQL(fk.referenced_table), m=match
    )


# Runs in the transaction that completes a run, before its rows become visible: may write what
# must appear with them, or raise Refused.
BeforeFlip = Callable[[psycopg.Connection, Run], None]


def _flip(conn: psycopg.Connection, run: Run, log: Log, timer: Timer, step: str, body: Callable[[], int]) -> int:
    """``body`` (which ends by completing the run) in one transaction, tried again (up to
    :data:`ATTACH_ATTEMPTS` times) when a lock stays taken longer than :data:`LOCK_TIMEOUT` (the
    statements wait for the readers in flight; one stuck behind a long transaction gives up) or
    when the server aborts it to break a deadlock. Returns what ``body`` returns.

    ATTACH locks the default partition, then the tables the foreign keys reference (it drops the
    load table's own key triggers there), all ACCESS EXCLUSIVE, and readers take those tables in
    either order (a statement locks the tables it names before the partitions it plans over; a
    function it calls locks more while it runs), so a reader can close a cycle with it: the
    server then aborts whichever waited first, usually the flip, which tries again (a clean-clone
    CI run failed a run so). Another run's clean-up reads the runs, then the recommendations, in
    one transaction: the flip first waits for it (:data:`SWAP_LOCK`) instead."""
    for attempt in range(1, ATTACH_ATTEMPTS + 1):
        try:
            with timer.step(step, "io"), conn.transaction():
                # Taken before the lock timeout is set: a concurrent run's clean-up is bounded by
                # its own timeouts, and waiting for it is no reason to give up.
                conn.execute(SWAP_LOCK.format("pg_advisory_xact_lock"))
                lock_timeout(conn)
                return body()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as e:
            if attempt == ATTACH_ATTEMPTS:
                raise
            why = "a deadlock" if isinstance(e, psycopg.errors.DeadlockDetected) else f"a lock stayed taken {LOCK_TIMEOUT}"
            log.warning(f"{step}: {why} (attempt {attempt} of {ATTACH_ATTEMPTS}); retrying")
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _complete(conn: psycopg.Connection, run: Run, users: int, rows: int) -> None:
    conn.execute(
        "UPDATE recommendation_runs SET status = 'complete', completed_at = now(), "
        "users_count = %s, rows_count = %s WHERE id = %s AND status = 'building'",
        (users, rows, run.id),
    )


def attach(
    conn: psycopg.Connection,
    run: Run,
    users: int,
    rows: int,
    log: Log,
    timer: Timer,
    before_flip: BeforeFlip | None = None,
) -> None:
    """Step 5: the table becomes the run's partition and the run ``complete``, in one
    transaction. ATTACH locks the default partition and the tables the foreign keys reference
    (``users``, ``posts``, ``recommendation_runs``) exclusively for a moment, so it waits for the
    readers in flight."""

    def body() -> int:
        if before_flip is not None:
            before_flip(conn, run)
        conn.execute(
            sql.SQL("ALTER TABLE user_recommendations ATTACH PARTITION {} FOR VALUES IN ({})").format(
                sql.Identifier(run.table), sql.Literal(run.id)
            )
        )
        _complete(conn, run, users, rows)
        return rows

    _flip(conn, run, log, timer, "attach and flip to complete", body)


def merge(
    conn: psycopg.Connection,
    run: Run,
    users: int,
    log: Log,
    timer: Timer,
    before_flip: BeforeFlip | None = None,
) -> int:
    """Steps 3-5 of a small run, in one transaction: its rows move from the load table into the
    parent (the default partition, whose indexes and keys take them row by row), rows naming a
    user or post deleted since the snapshot left behind, and the run becomes ``complete``; the
    load table is dropped after. Returns the rows moved."""

    def body() -> int:
        if before_flip is not None:
            before_flip(conn, run)
        moved = conn.execute(
            sql.SQL(
                "INSERT INTO user_recommendations SELECT t.* FROM {} t "
                "WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = t.user_id) "
                "AND EXISTS (SELECT 1 FROM posts p WHERE p.id = t.post_id)"
            ).format(sql.Identifier(run.table))
        ).rowcount
        _complete(conn, run, users, moved)
        return moved

    moved = _flip(conn, run, log, timer, "insert and flip to complete", body)
    with conn.transaction():
        # never attached: dropping it locks nothing a reader holds
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(run.table)))
    return moved


def fail_run(conn: psycopg.Connection, run: Run) -> None:
    """The run is ``failed`` and its table gone (whatever state the connection was left in)."""
    conn.rollback()
    with conn.transaction():
        conn.execute(
            "UPDATE recommendation_runs SET status = 'failed', completed_at = now() WHERE id = %s",
            (run.id,),
        )
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(run.table)))


def _superseded_refresh_runs(conn: psycopg.Connection, shard: str, run_id: int) -> list[int]:
    """Refresh runs no user is served from any more (a newer complete run covers each of their
    users). After a refresh, the rows its users had in older refresh runs go first: a refresh run
    keeps only the users it still serves, so the lists kept until the nightly run are one per
    refreshed user, not one per refresh."""
    if shard == REFRESH_SHARD:
        older = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM recommendation_runs WHERE shard = %s AND status = 'complete' AND id < %s",
                (REFRESH_SHARD, run_id),
            ).fetchall()
        ]
        if older:
            conn.execute(
                "DELETE FROM user_recommendations WHERE run_id = ANY(%s) AND user_id IN "
                "(SELECT DISTINCT user_id FROM user_recommendations WHERE run_id = %s)",
                (older, run_id),
            )
    return [
        r[0]
        for r in conn.execute(
            "SELECT rr.id FROM recommendation_runs rr WHERE rr.shard = %s AND rr.status = 'complete' "
            "AND rr.id <> %s AND NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT user_id FROM "
            "user_recommendations WHERE run_id = rr.id) u WHERE current_recommendation_run(u.user_id) = rr.id)",
            (REFRESH_SHARD, run_id),
        ).fetchall()
    ]


def _remove_unused_models(conn: psycopg.Connection, log: Log) -> int:
    """Models no complete or building run names, once superseded (older than the newest model a
    complete run names) or a day old (a run that died after writing its model): deleted with their
    profiles and neighbours (cascade). A model being written for a run still computing is newer
    than any in use, so it stays. Returns how many."""
    try:
        with conn.transaction():
            lock_timeout(conn)
            # The delete reads recommendation_runs, then its ON DELETE SET NULL writes it: taken as
            # a read first, that lock would be upgraded behind a concurrent run's DROP of a run
            # table (which wants recommendation_runs exclusively while holding user_recommendations):
            # a deadlock a clean-clone CI run hit. Taking the write lock first orders the two.
            conn.execute("LOCK TABLE recommendation_runs IN ROW EXCLUSIVE MODE")
            return conn.execute(
                "DELETE FROM recommendation_models m WHERE NOT EXISTS (SELECT 1 FROM recommendation_runs r "
                "WHERE r.model_id = m.id AND r.status IN ('complete', 'building')) AND "
                "(m.id < (SELECT max(model_id) FROM recommendation_runs WHERE status = 'complete') "
                "OR m.created_at < now() - interval '1 day')"
            ).rowcount
    except psycopg.errors.LockNotAvailable:
        # a refresh writing profiles into a model holds its rows: the next clean-up removes it
        log.warning(f"clean-up: unused models left in place (a row stayed locked {LOCK_TIMEOUT})")
        return 0


@dataclass(frozen=True)
class CleanedUp:
    """What :func:`clean_up` removed."""

    runs: int
    expired_rows: int
    models: int


def clean_up(
    conn: psycopg.Connection, shard: str, run_id: int, dagster_run_id: str, log: Log
) -> CleanedUp:
    """Step 6: older runs of this shard (a nightly shard's; a refresh covers users, not a shard),
    failed runs, runs stuck in ``building`` for a day (their process died), earlier attempts of
    this shard in the same Dagster run (a step runs again only when its earlier attempt died, e.g.
    a Celery worker killed mid-write: the broker hands the step to another worker), refresh runs
    no user is served from any more and tables of runs that no longer exist: their tables are
    dropped (a
    partition's drop is a catalog change, not a delete of its rows), then the runs (rows in the
    default partition go by cascade); then rows past their expiry (runs of another shard layout),
    then the models no run names. Concurrent runs' clean-ups take turns (a session advisory lock):
    interleaved, one's DROP of a run table and the other's reads and deletes took the same tables'
    locks in opposite orders and deadlocked. The same lock keeps a clean-up from interleaving with
    another run's flip (:func:`_flip`)."""
    conn.execute(SWAP_LOCK.format("pg_advisory_lock"))
    conn.commit()
    try:
        return _clean_up(conn, shard, run_id, dagster_run_id, log)
    finally:
        conn.rollback()
        conn.execute(SWAP_LOCK.format("pg_advisory_unlock"))
        conn.commit()


def _clean_up(
    conn: psycopg.Connection, shard: str, run_id: int, dagster_run_id: str, log: Log
) -> CleanedUp:
    superseded = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM recommendation_runs WHERE (shard = %s AND shard <> %s AND status = 'complete' "
            "AND id < %s) OR status = 'failed' OR "
            "(status = 'building' AND started_at < now() - interval '1 day') OR "
            "(status = 'building' AND shard = %s AND dagster_run_id = %s AND id < %s)",
            (shard, REFRESH_SHARD, run_id, shard, dagster_run_id, run_id),
        ).fetchall()
    ]
    superseded += _superseded_refresh_runs(conn, shard, run_id)
    # tables of runs that no longer exist (their rows were removed without them)
    orphans = [
        r[0]
        for r in conn.execute(
            "SELECT t.id FROM (SELECT substring(tablename FROM "
            "'^user_recommendations_run_([0-9]+)$')::bigint AS id FROM pg_tables "
            "WHERE schemaname = current_schema()) t "
            "WHERE t.id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM recommendation_runs r WHERE r.id = t.id)"
        ).fetchall()
    ]
    conn.commit()
    removed = 0
    for old in superseded + orphans:
        try:
            with conn.transaction():
                lock_timeout(conn)
                drop_run_table(conn, load_table(old))
                conn.execute("DELETE FROM recommendation_runs WHERE id = %s", (old,))
            removed += 1
        except psycopg.errors.LockNotAvailable:
            # A long reader holds the table: the new run is live already, so this is not worth
            # failing for (and Redis still has to be written); the next run's clean-up removes it.
            log.warning(f"clean-up: run {old} left in place (its table stayed locked {LOCK_TIMEOUT})")
    with conn.transaction():
        expired = conn.execute("DELETE FROM user_recommendations WHERE expires_at < now()").rowcount
    return CleanedUp(removed, int(expired), _remove_unused_models(conn, log))


@dataclass(frozen=True)
class Written:
    """What :func:`write_run` did: the run and its rows, what the clean-up removed, and, for a run
    a ``before_flip`` refused, why (nothing was written then)."""

    run: Run | None  # None: refused before its row was written
    rows: int
    cleaned: CleanedUp
    refused: str | None = None

    @property
    def runs_removed(self) -> int:
        return self.cleaned.runs

    @property
    def expired_rows_removed(self) -> int:
        return self.cleaned.expired_rows


def write_run(
    postgres: PostgresResource,
    *,
    shard: str,
    dagster_run_id: str,
    config: dict[str, Any],
    expires_after_hours: int,
    users: int,
    columns: Sequence[str],
    chunks: Sequence[tuple[int, int]],
    frame_of: RowFrames,
    log: Log,
    timer: Timer,
    model_id: int | None = None,
    own_partition: bool = True,
    before_flip: BeforeFlip | None = None,
) -> Written:
    """Steps 1-6 for one shard's run (see the module docstring). ``config`` is stored in
    ``recommendation_runs.config``, ``model_id`` in its ``model_id``; ``chunks`` are user ranges
    whose rows ``frame_of`` renders. ``own_partition=False``: a small run, merged into the default
    partition (:func:`merge`). ``before_flip`` runs in the transaction that completes the run; if
    it raises :class:`Refused`, the run is removed and ``Written.refused`` says why."""
    with postgres.connect() as conn:
        with timer.step("create run", "io"):
            try:
                run = start_run(conn, shard, dagster_run_id, config, expires_after_hours, model_id)
            except psycopg.errors.ForeignKeyViolation:
                if model_id is None:
                    raise
                # the clean-up removes a model once a newer run stops naming it: this run is late
                reason = f"model {model_id} was removed since it was read: a newer run replaced it"
                return Written(None, 0, CleanedUp(0, 0, 0), refused=reason)
        try:
            rows = copy_rows(postgres, run, columns, chunks, frame_of, timer)
            if own_partition:
                rows -= constrain(postgres, run.table, timer)
                attach(conn, run, users, rows, log, timer, before_flip)
            else:
                rows = merge(conn, run, users, log, timer, before_flip)
        except Refused as refused:
            fail_run(conn, run)
            return Written(run, 0, CleanedUp(0, 0, 0), refused=str(refused))
        except BaseException:
            fail_run(conn, run)
            raise
        with timer.step("clean up", "io"):
            cleaned = clean_up(conn, shard, run.id, dagster_run_id, log)
    return Written(run, rows, cleaned)
