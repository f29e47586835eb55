"""`feedrank evaluate --database-url`: the same protocol on the project's own PostgreSQL."""

from __future__ import annotations

import json

import numpy as np
from feedrank import datasets
import psycopg
from feedrank.cli import main

SMALL = ["--users", "300", "--posts", "1500", "--interactions", "20000", "--end-time", "2026-01-01T00:00:00Z"]


def test_evaluate_reads_the_projects_database(fresh_database_url, tmp_path, capsys):
    assert main(["demo-data", "--database-url", fresh_database_url, "--seed", "3", *SMALL]) == 0
    data = datasets.load_database(fresh_database_url)
    # the bulk read (COPY into polars) holds exactly the positive (user, post) pairs, ids sorted
    with psycopg.connect(fresh_database_url) as conn:
        pairs = set(conn.execute(
            "SELECT user_id::text, post_id::text FROM user_interactions WHERE interaction_type <> 'hide'"
        ).fetchall())
    assert {(data.user_ids[u], data.item_ids[i]) for u, i in zip(data.users, data.items)} == pairs
    assert len(data.users) == len(pairs)
    assert data.user_ids == sorted(data.user_ids) and data.item_ids == sorted(data.item_ids)
    # each item carries its post's own content, creation time and author (the author's user
    # index, or -1 when the author has no interaction and so is not a user of the data set)
    with psycopg.connect(fresh_database_url) as conn:
        posts = {pid: (content, created, author) for pid, content, created, author in conn.execute(
            "SELECT id::text, content, extract(epoch FROM created_at)::float8, user_id::text FROM posts"
        ).fetchall()}
    user_index = {u: k for k, u in enumerate(data.user_ids)}
    assert data.item_text == [posts[p][0] for p in data.item_ids]
    np.testing.assert_array_equal(data.item_created, [posts[p][1] for p in data.item_ids])
    np.testing.assert_array_equal(data.item_author, [user_index.get(posts[p][2], -1) for p in data.item_ids])
    assert (data.item_author >= 0).any() and (data.item_author == -1).any()  # both cases met
    out = tmp_path / "db.json"
    status = main(["evaluate", "--database-url", fresh_database_url, "--models",
                   "random,popular,content,hybrid_default", "--json", str(out), "--quiet"])
    assert status == 0
    doc = json.loads(out.read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert doc["dataset"] == "database" and doc["users_evaluated"] > 100
    # the synthetic data has planted topics: the hybrid must find them better than chance
    assert rows["hybrid_default"]["ndcg@10"] > 2 * rows["random"]["ndcg@10"]
    assert "| hybrid_default |" in capsys.readouterr().out
