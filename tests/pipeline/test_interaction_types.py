"""The interaction types exist once, in the core (``InteractionType``): the Python lists derive
from it, and the migrations' CHECK constraint on ``user_interactions`` names the same types."""

import re
import uuid

import feedrank
import psycopg
import pytest
from feedrank import demo_data

from dagster_pipeline import assets


@pytest.mark.fast
def test_the_python_lists_are_the_cores():
    core = tuple(feedrank.interaction_types())
    assert core and len(set(core)) == len(core)
    assert demo_data.INTERACTION_TYPES == core
    assert tuple(assets.INTERACTION_TYPES) == core
    assert list(feedrank.default_config()["interaction_weights"]) == list(core)


def test_the_migrations_check_constraint_allows_exactly_the_cores_types(db_conn):
    definition = db_conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conname = 'user_interactions_type_check' AND conrelid = 'user_interactions'::regclass"
    ).fetchone()[0]
    allowed = re.findall(r"'([^']*)'", definition)
    assert sorted(allowed) == sorted(feedrank.interaction_types()), definition
    # and the database agrees: every core type is stored, another one refused (rolled back after)
    user, post = uuid.uuid4(), uuid.uuid4()
    db_conn.execute("INSERT INTO users (id, username) VALUES (%s, 'types_check')", (user,))
    db_conn.execute("INSERT INTO posts (id, user_id, content) VALUES (%s, %s, 'x')", (post, user))
    for kind in feedrank.interaction_types():
        db_conn.execute(
            "INSERT INTO user_interactions (user_id, post_id, interaction_type) VALUES (%s, %s, %s)",
            (user, post, kind),
        )
    with pytest.raises(psycopg.errors.CheckViolation, match="user_interactions_type_check"):
        db_conn.execute(
            "INSERT INTO user_interactions (user_id, post_id, interaction_type) VALUES (%s, %s, 'bookmark')",
            (user, post),
        )
