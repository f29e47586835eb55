"""The recommendation graph:

    user_interactions_snapshot -> post_features, user_features -> serving_model,
        recommendation_scores -> user_recommendations

Python here only moves arrays: PostgreSQL formats rows (COPY), polars parses and joins them,
scipy assembles sparse matrices, and the numeric work (TF-IDF, similarities, hybrid scores, top-k,
reasons, cache entries) is done by the ``feedrank`` extension in Rust. Every asset returns a
bundle (see ``io_manager.py``) and metadata a person wants in the UI: counts, durations, score
distribution.

``recommendation_scores`` and ``user_recommendations`` are partitioned by user shard
(``partitions.py``): a run can cover one shard or a range of shards; each shard is written as its
own recommendation run, which becomes visible atomically. ``serving_model`` (``serving.py``) is
written once per Dagster run, and every shard's run names it.

The functions here also serve the incremental refresh (``refresh.py``), which runs the same steps
for a set of users.
"""


import time
from typing import Any

import dagster as dg
import feedrank
import numpy as np
import polars as pl
import scipy.sparse as sp
from psycopg import sql

from dagster_pipeline import serving, swap
from dagster_pipeline.arms import plan_arms, running_experiments
from dagster_pipeline.partitions import SHARD_HASH_SQL, WHOLE, parse_shard_key
from dagster_pipeline.resources import PostgresResource, RedisResource, ScoringResource
from dagster_pipeline.serving import RunModel, StoredProfiles
from dagster_pipeline.timing import Timer

# The core's lists, in the core's order (arrays, columns and JSON use it).
COMPONENTS = feedrank.component_names()
INTERACTION_TYPES = feedrank.interaction_types()


def _distribution(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    qs = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
    return {
        name: round(float(q), 5)
        for name, q in zip(("min", "p10", "median", "p90", "p99", "max"), qs)
    } | {"mean": round(float(values.mean()), 5)}


def _shards(context: dg.AssetExecutionContext) -> list[str]:
    """The user shards this step covers: its partition keys, or the whole user base."""
    if context.has_partition_key_range:  # a run over several shards
        return list(context.partition_keys)
    if context.has_partition_key:
        return [context.partition_key]
    return [WHOLE]


# ------------------------------------------------------------------------------------------------
# user_interactions_snapshot


def index_snapshot(
    users: pl.DataFrame, posts: pl.DataFrame, interactions: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Dense indices for the snapshot's rows as COPY read them: ``user_idx`` and ``post_idx`` are
    row numbers, a post's ``author_idx`` its author's (-1: not a user), an interaction keeps the
    indices of its user and post (one naming neither, or of an unknown ``type``, is left out)."""
    users = users.with_row_index("user_idx").with_columns(pl.col("user_idx").cast(pl.Int32))
    posts = posts.with_row_index("post_idx").with_columns(pl.col("post_idx").cast(pl.Int32))
    posts = posts.join(
        users.select(pl.col("user_id").alias("author_id"), pl.col("user_idx").alias("author_idx")),
        on="author_id",
        how="left",
        maintain_order="left",
    ).with_columns(pl.col("author_idx").fill_null(-1))
    interactions = (
        interactions.join(users.select("user_id", "user_idx"), on="user_id", how="inner")
        .join(posts.select("post_id", "post_idx"), on="post_id", how="inner")
        .select("user_idx", "post_idx", pl.col("type").fill_null(-1), "created_at")
        .filter(pl.col("type") >= 0)
    )
    return users, posts, interactions


def user_interactions_snapshot(
    scoring: ScoringResource, postgres: PostgresResource
):  # returns MaterializeResult(value=bundle): the annotation would declare no output
    """Users, posts and the interactions of the last lookback_days, read in one consistent
    snapshot (REPEATABLE READ) with COPY into polars; ids mapped to dense indices. With them, the
    experiments running at the snapshot's time (arms.py), validated by the core."""
    cfg = scoring.scoring_config
    timer = Timer()
    types = list(INTERACTION_TYPES)  # an interaction's type travels as its position here
    with postgres.connect() as conn:
        conn.isolation_level = 3  # psycopg IsolationLevel.REPEATABLE_READ
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM now())::float8")
            snapshot_at = float(cur.fetchone()[0])
            experiments = running_experiments(cur, snapshot_at)
            reads = {
                "users": (
                    sql.SQL("SELECT id, {} FROM users ORDER BY id").format(
                        sql.SQL(SHARD_HASH_SQL).format(col=sql.Identifier("id"))
                    ),
                    None,
                    {"user_id": pl.String, "shard_hash": pl.Int64},
                ),
                "posts": (
                    sql.SQL(
                        "SELECT id, user_id, extract(epoch FROM created_at)::float8, content "
                        "FROM posts ORDER BY id"
                    ),
                    None,
                    {"post_id": pl.String, "author_id": pl.String, "created_at": pl.Float64, "content": pl.String},
                ),
                "interactions": (
                    sql.SQL(
                        "SELECT user_id, post_id, array_position(%s::text[], interaction_type::text) - 1, "
                        "extract(epoch FROM created_at)::float8 FROM user_interactions "
                        "WHERE created_at >= to_timestamp(%s) - make_interval(days => %s)"
                    ),
                    (types, snapshot_at, int(cfg["lookback_days"])),
                    {"user_id": pl.String, "post_id": pl.String, "type": pl.Int8, "created_at": pl.Float64},
                ),
            }
            frames = {}
            for name, (query, params, schema) in reads.items():
                with timer.step(f"copy {name}", "io"):
                    frames[name] = postgres.copy_out(cur, query, params, schema)
        conn.rollback()
    with timer.step("map ids to indices"):
        users, posts, interactions = index_snapshot(frames["users"], frames["posts"], frames["interactions"])
    counts = interactions.group_by("type").len().sort("type")
    per_type = {types[t]: int(n) for t, n in counts.iter_rows()}
    active = interactions["user_idx"].n_unique() if interactions.height else 0
    bundle = {
        "users": users,
        "posts": posts,
        "interactions": interactions,
        "snapshot_at": snapshot_at,
        "lookback_days": int(cfg["lookback_days"]),
        "interaction_types": types,
        "experiments": experiments,
    }
    return dg.MaterializeResult(
        value=bundle,
        metadata={
            "users": dg.MetadataValue.int(users.height),
            "posts": dg.MetadataValue.int(posts.height),
            "interactions": dg.MetadataValue.int(interactions.height),
            "users_with_interactions": dg.MetadataValue.int(int(active)),
            "interactions_by_type": dg.MetadataValue.json(per_type),
            "lookback_days": dg.MetadataValue.int(int(cfg["lookback_days"])),
            "snapshot_at": dg.MetadataValue.timestamp(snapshot_at),
            "experiments_running": dg.MetadataValue.json([e["name"] for e in experiments]),
            **timer.metadata(),
        },
    )


# ------------------------------------------------------------------------------------------------
# post_features


def interaction_values(snapshot: dict[str, Any], cfg: dict[str, Any]) -> np.ndarray:
    """Each interaction's weight, from its type (ScoringConfig.interaction_weights)."""
    weights = np.array([cfg["interaction_weights"][t] for t in snapshot["interaction_types"]], np.float32)
    return weights[snapshot["interactions"]["type"].to_numpy()]


def post_features(
    scoring: ScoringResource, user_interactions_snapshot: dict[str, Any]
):  # returns MaterializeResult(value=bundle): the annotation would declare no output
    """TF-IDF of post content (feedrank.TfidfVectorizer, fitted vocabulary kept as JSON), age,
    recency and engagement (weighted interaction count) per post."""
    return compute_post_features(scoring.scoring_config, user_interactions_snapshot)


def compute_post_features(
    cfg: dict[str, Any], snap: dict[str, Any], tfidf_json: str | None = None
) -> dg.MaterializeResult:
    """``post_features`` under the ScoringConfig ``cfg``; with ``tfidf_json`` (a fitted
    ``TfidfModel::to_json``, as a serving model stores it) the posts are vectorized in that
    vocabulary instead of a new fit (the incremental refresh: its profiles must be in the
    vocabulary of the model it builds on)."""
    timer = Timer()
    posts: pl.DataFrame = snap["posts"]
    n_posts = posts.height
    with timer.step("tfidf", "rust"):
        if tfidf_json is None:
            vectorizer = feedrank.TfidfVectorizer(min_df=1, max_df=1.0)
            tfidf = vectorizer.fit_transform(posts["content"].to_list())
        else:
            vectorizer = feedrank.TfidfVectorizer.from_json(tfidf_json)
            tfidf = vectorizer.transform(posts["content"].to_list())
        tfidf = sp.csr_matrix(tfidf, dtype=np.float32)
        vocabulary_json = vectorizer.to_json()
    with timer.step("recency and engagement"):
        age_days = np.maximum(
            (snap["snapshot_at"] - posts["created_at"].to_numpy()) / 86400.0, 0.0
        ).astype(np.float32)
        recency = np.exp(-age_days / np.float32(cfg["recency_tau_days"])).astype(np.float32)
        inter = snap["interactions"]
        engagement = np.bincount(
            inter["post_idx"].to_numpy(),
            weights=interaction_values(snap, cfg),
            minlength=n_posts,
        ).astype(np.float32)
    bundle = {
        "post_ids": posts.select("post_id"),
        "post_author": posts["author_idx"].to_numpy().astype(np.int64),
        "tfidf": tfidf,
        "vocabulary_json": vocabulary_json,
        "age_days": age_days,
        "recency": recency,
        "engagement": engagement,
        "snapshot_at": snap["snapshot_at"],
    }
    nnz_per_post = tfidf.getnnz(axis=1)
    return dg.MaterializeResult(
        value=bundle,
        metadata={
            "posts": dg.MetadataValue.int(n_posts),
            "vocabulary_size": dg.MetadataValue.int(int(tfidf.shape[1])),
            "tfidf_nnz": dg.MetadataValue.int(int(tfidf.nnz)),
            "posts_without_terms": dg.MetadataValue.int(int((nnz_per_post == 0).sum())),
            "posts_without_interactions": dg.MetadataValue.int(int((engagement == 0).sum())),
            "age_days": dg.MetadataValue.json(_distribution(age_days)),
            "engagement": dg.MetadataValue.json(_distribution(engagement)),
            **timer.metadata(),
        },
    )


# ------------------------------------------------------------------------------------------------
# user_features


def user_features(
    scoring: ScoringResource, user_interactions_snapshot: dict[str, Any]
):  # returns MaterializeResult(value=bundle): the annotation would declare no output
    """Each user's weighted interaction vector (users x posts: interaction-type weight x the
    recency of the user's own history) and the posts they hid; feedrank.HybridModel builds the
    content profiles from these."""
    cfg = scoring.scoring_config
    snap = user_interactions_snapshot
    timer = Timer()
    users: pl.DataFrame = snap["users"]
    n_users, n_posts = users.height, snap["posts"].height
    inter = snap["interactions"]
    rows = inter["user_idx"].to_numpy()
    cols = inter["post_idx"].to_numpy()
    with timer.step("history weights", "rust"):
        # recency within the user's own history (the evaluation's definition)
        recency = feedrank.history_weights(rows, inter["created_at"].to_numpy(), cols, float(cfg["history_half_life"]))
    with timer.step("interaction matrix"):
        values = interaction_values(snap, cfg) * recency  # x the interaction type's weight
        positive = values > 0
        matrix = sp.csr_matrix(
            (values[positive], (rows[positive], cols[positive])),
            shape=(n_users, n_posts),
            dtype=np.float32,
        )
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        # "not interested": never recommended to that user again
        hidden_mask = inter["type"].to_numpy() == snap["interaction_types"].index("hide")
        hidden = sp.csr_matrix(
            (
                np.ones(int(hidden_mask.sum()), np.float32),
                (rows[hidden_mask], cols[hidden_mask]),
            ),
            shape=(n_users, n_posts),
            dtype=np.float32,
        )
        hidden.sum_duplicates()
        hidden.data[:] = 1.0
    history = np.diff(matrix.indptr).astype(np.int32)
    bundle = {
        "user_ids": users.select("user_id"),
        "shard_hash": users["shard_hash"].to_numpy(),
        "interactions": matrix,
        "hidden": hidden,
        "history_length": history,
        "snapshot_at": snap["snapshot_at"],
        # the experiments running at the snapshot: the scoring step applies their config arms
        "experiments": snap.get("experiments", []),
    }
    return dg.MaterializeResult(
        value=bundle,
        metadata={
            "users": dg.MetadataValue.int(n_users),
            "users_with_history": dg.MetadataValue.int(int((history > 0).sum())),
            "cold_start_users": dg.MetadataValue.int(int((history == 0).sum())),
            "matrix_nnz": dg.MetadataValue.int(int(matrix.nnz)),
            "hidden_pairs": dg.MetadataValue.int(int(hidden.nnz)),
            "history_length": dg.MetadataValue.json(_distribution(history[history > 0].astype(np.float64))),
            **timer.metadata(),
        },
    )


# ------------------------------------------------------------------------------------------------
# recommendation_scores


def shard_users(shard_hash: np.ndarray, shard_key: str) -> np.ndarray:
    index, count = parse_shard_key(shard_key)
    return np.flatnonzero(np.asarray(shard_hash) % count == index).astype(np.int64)


def validate_scores(
    bundle: dict[str, Any], post_author: np.ndarray, hidden: sp.csr_matrix, weights: dict[str, float]
) -> tuple[bool, dict[str, Any]]:
    """The invariants a shard's scores must hold before anything is written. ``weights`` are the
    run's; the users of an experiment's arm are held to their arm's (``bundle["configs"]``)."""
    idx = bundle["indices"]
    valid = idx >= 0
    limits = np.array([float(sum(weights.values()))] + [float(sum(c["weights"].values())) for c in bundle.get("configs", [])[1:]])
    config_of = bundle.get("config_of")
    row_limit = limits[np.zeros(idx.shape[0], np.int64) if config_of is None else np.asarray(config_of)]
    max_score = np.broadcast_to(row_limit[:, None], idx.shape)[valid] + 1e-4
    scores = bundle["scores"][valid]
    comps = bundle["components"][valid]
    users = bundle["user_idx"]
    non_finite = int((~np.isfinite(scores)).sum() + (~np.isfinite(comps)).sum())
    out_of_range = int(((scores < -1e-6) | (scores > max_score)).sum())
    comps_out = int(((comps < -1e-6) | (comps > 1 + 1e-6)).sum())
    own = int((post_author[np.where(valid, idx, 0)] == users[:, None])[valid].sum())
    row_of = np.full(hidden.shape[0], -1, np.int64)
    row_of[users] = np.arange(users.size)
    hcoo = hidden.tocoo()
    rows = row_of[hcoo.row]
    sel = rows >= 0
    hidden_hits = int((idx[rows[sel]] == hcoo.col[sel, None]).any(axis=1).sum()) if sel.any() else 0
    duplicates = 0
    if idx.size:
        srt = np.sort(np.where(valid, idx, -1 - np.arange(idx.shape[1])), axis=1)
        duplicates = int((srt[:, 1:] == srt[:, :-1]).sum())
    facts = {
        "non_finite": non_finite,
        "scores_out_of_range": out_of_range,
        "components_out_of_range": comps_out,
        "own_posts": own,
        "hidden_posts": hidden_hits,
        "duplicate_posts": duplicates,
    }
    return all(v == 0 for v in facts.values()), facts


def prepare_model(cfg: dict[str, Any], post_features: dict[str, Any], user_features: dict[str, Any]) -> feedrank.HybridModel:
    """``feedrank.HybridModel`` over every user and post of the snapshot (the weighting, the
    collaborative model and the per-post values, once), hidden posts excluded."""
    return feedrank.HybridModel(
        user_features["interactions"],
        post_features["tfidf"],
        np.asarray(post_features["age_days"]),
        np.asarray(post_features["engagement"]),
        np.asarray(post_features["post_author"]),
        cfg,
        exclude=user_features["hidden"],
    )


def score_users(
    model: feedrank.HybridModel,
    users: np.ndarray,
    k: int,
    batch: int,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The top ``k`` of each of ``users`` (``model.topk`` in batches of ``batch``): post indices
    (-1 padded), scores, components, and the seconds spent in the kernel. With ``out`` (arrays of
    that form, ``k`` wide) the results go into its ``rows`` instead (one per user)."""
    m = users.size
    if out is None:
        out = (
            np.full((m, k), -1, np.int32),
            np.zeros((m, k), np.float32),
            np.zeros((m, k, len(COMPONENTS)), np.float32),
        )
        rows = None
    indices, scores, components = out
    kernel_seconds = 0.0
    for start in range(0, m, batch):
        part = users[start : start + batch]
        at = slice(start, start + part.size) if rows is None else rows[start : start + part.size]
        t = time.perf_counter()
        result = model.topk(part)
        kernel_seconds += time.perf_counter() - t
        got = result["indices"].shape[1]
        indices[at, :got] = result["indices"]
        scores[at, :got] = result["scores"]
        components[at, :got] = result["components"]
    return indices, scores, components, kernel_seconds


def scores_bundle(
    shard: str,
    users: np.ndarray,
    scored: tuple[np.ndarray, np.ndarray, np.ndarray],
    post_features: dict[str, Any],
    user_features: dict[str, Any],
    cfg: dict[str, Any],
    arms: tuple[list[dict[str, Any]], np.ndarray, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What ``user_recommendations`` writes for a set of users (a shard's, or the refresh's).
    ``arms``: the configurations the users were scored with (``cfg`` first), each user's index
    into them, and the run's record of the experiments (``experiments.ArmPlan``); none: ``cfg``
    for everyone."""
    indices, scores, components = scored
    configs, config_of, record = arms if arms is not None else ([cfg], np.zeros(users.size, np.int32), {})
    return {
        "user_idx": users,
        "user_ids": user_features["user_ids"].select(pl.col("user_id").gather(users)),
        "post_ids": post_features["post_ids"],
        "indices": indices,
        "scores": scores,
        "components": components,
        "config": cfg,
        "configs": configs,
        "config_of": config_of,
        "experiments": record,
        "snapshot_at": user_features["snapshot_at"],
        "shard": shard,
    }


def score_user_sets(
    cfg: dict[str, Any],
    post_features: dict[str, Any],
    user_features: dict[str, Any],
    sets: dict[str, np.ndarray],
    batch: int,
    timer: Timer,
) -> tuple[dict[str, dict[str, Any]], float, dict[str, int]]:
    """Each set of users (a shard's, or the refresh's) scored and bundled (``scores_bundle``):
    the users a running experiment's ``config`` arm applies to with that arm's configuration
    (``arms.plan_arms``, the API's rule), everyone else with ``cfg``. One model at a time,
    each prepared once for every set, and none for a configuration no user of the sets has: with
    no ``config`` arm running this is one model, as without experiments. Returns the bundles, the
    kernel's seconds, and the users of each arm scored with its own configuration."""
    names = list(sets)
    everyone = np.concatenate([sets[s] for s in names]) if names else np.zeros(0, np.int64)
    with timer.step("experiment arms", "rust"):
        plan = plan_arms(user_features.get("experiments", []), cfg, user_features["user_ids"]["user_id"].gather(everyone))
    k = plan.top_k
    bounds = np.cumsum([0] + [sets[s].size for s in names])
    config_of = {s: plan.config_of[bounds[i] : bounds[i + 1]] for i, s in enumerate(names)}
    out = {
        s: (
            np.full((sets[s].size, k), -1, np.int32),
            np.zeros((sets[s].size, k), np.float32),
            np.zeros((sets[s].size, k, len(COMPONENTS)), np.float32),
        )
        for s in names
    }
    kernel_seconds = 0.0
    for g, config in enumerate(plan.configs):
        if not (plan.config_of == g).any():
            continue
        step = "prepare model" if g == 0 else f"prepare model ({', '.join(plan.labels[g])})"
        with timer.step(step, "rust"):
            model = prepare_model(config, post_features, user_features)
        for s in names:
            rows = np.flatnonzero(config_of[s] == g)
            if rows.size:
                kernel_seconds += score_users(model, sets[s][rows], k, batch, out[s], rows)[3]
        del model  # the next configuration's model replaces it: one in memory at a time
    bundles = {
        s: scores_bundle(s, sets[s], out[s], post_features, user_features, cfg, (plan.configs, config_of[s], plan.record))
        for s in names
    }
    arm_users = {", ".join(plan.labels[g]): int((plan.config_of == g).sum()) for g in range(1, len(plan.configs))}
    return bundles, kernel_seconds, arm_users


def recommendation_scores(
    context: dg.AssetExecutionContext,
    scoring: ScoringResource,
    post_features: dict[str, Any],
    user_features: dict[str, Any],
):  # returns MaterializeResult(value=bundle): the annotation would declare no output
    """Top top_k posts per user by the hybrid score (feedrank.HybridModel.topk), in batches of
    batch_size users, with each component kept. Users without history get fresh and popular posts;
    posts without interactions compete through content and recency. The users a running
    experiment's config arm applies to are scored with the arm's configuration (arms.py)."""
    cfg = scoring.scoring_config
    timer = Timer()
    batch = scoring.batch_size
    weights = dict(cfg["weights"])
    hidden = user_features["hidden"]
    history = np.asarray(user_features["history_length"])
    author = np.asarray(post_features["post_author"])
    sets = {shard: shard_users(user_features["shard_hash"], shard) for shard in _shards(context)}
    # each model prepared once (weighting, the collaborative model, per-post values), then scored in batches
    outputs, kernel_seconds, arm_users = score_user_sets(cfg, post_features, user_features, sets, batch, timer)
    k = int(next(iter(outputs.values()))["indices"].shape[1])
    all_scores: list[np.ndarray] = []
    per_shard: dict[str, dict[str, int]] = {}
    for shard, bundle in outputs.items():
        users, indices = sets[shard], bundle["indices"]
        valid = indices >= 0
        all_scores.append(bundle["scores"][valid])
        per_shard[shard] = {
            "users": int(users.size),
            "cold_start_users": int((history[users] == 0).sum()),
            "users_without_recommendations": int((~valid.any(axis=1)).sum()),
            "rows": int(valid.sum()),
        }
    timer.add("topk", "rust", kernel_seconds)
    with timer.step("validate"):
        checks = {s: validate_scores(b, author, hidden, weights) for s, b in outputs.items()}
    passed = all(ok for ok, _ in checks.values())
    facts = {s: f for s, (_, f) in checks.items()}
    flat = np.concatenate(all_scores) if all_scores else np.zeros(0, np.float32)
    comp_means = {}
    for i, name in enumerate(COMPONENTS):
        vals = [b["components"][..., i][b["indices"] >= 0] for b in outputs.values()]
        v = np.concatenate(vals) if vals else np.zeros(0)
        comp_means[name] = round(float(v.mean()), 4) if v.size else 0.0
    value: Any = outputs if len(outputs) > 1 else next(iter(outputs.values()))
    totals = {key: sum(s[key] for s in per_shard.values()) for key in next(iter(per_shard.values()))}
    return dg.MaterializeResult(
        value=value,
        metadata={
            "shards": dg.MetadataValue.json(per_shard),
            "users_covered": dg.MetadataValue.int(totals["users"] - totals["users_without_recommendations"]),
            "cold_start_users": dg.MetadataValue.int(totals["cold_start_users"]),
            "rows": dg.MetadataValue.int(totals["rows"]),
            "top_k": dg.MetadataValue.int(k),
            "batch_size": dg.MetadataValue.int(batch),
            "experiment_arm_users": dg.MetadataValue.json(arm_users),
            "weights": dg.MetadataValue.json(weights),
            "score_distribution": dg.MetadataValue.json(_distribution(flat)),
            "component_means": dg.MetadataValue.json(comp_means),
            "kernel_seconds": dg.MetadataValue.float(round(kernel_seconds, 3)),
            **timer.metadata(),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="scores_valid",
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"violations": dg.MetadataValue.json(facts)},
            )
        ],
    )


# ------------------------------------------------------------------------------------------------
# serving_model


def serving_model(
    context: dg.AssetExecutionContext,
    scoring: ScoringResource,
    postgres: PostgresResource,
    post_features: dict[str, Any],
    user_features: dict[str, Any],
):  # returns MaterializeResult(value=bundle): the annotation would declare no output
    """What the feed's request-time sources read (serving.py, migration V7): one serving model
    (recommendation_models: the fitted TF-IDF, the run's ScoringConfig, the snapshot's time), the
    stored profile of every user with history (user_profiles, feedrank.user_profiles) and the
    item-item neighbours of every post that has any (post_neighbors, feedrank.item_neighbors, k =
    sources.because_you_liked.neighbors). Its value is the model's id, which every shard's
    recommendation run names, and the profiles, which go into the Redis entries."""
    cfg = scoring.scoring_config
    timer = Timer()
    history = np.asarray(user_features["history_length"])
    with timer.step("profiles", "rust"):
        profiles = StoredProfiles.compute(np.flatnonzero(history > 0), user_features, post_features, cfg)
    k = int(cfg["sources"]["because_you_liked"]["neighbors"])
    with timer.step("item neighbours", "rust"):
        neighbors = feedrank.item_neighbors(user_features["interactions"], k=k)
    with timer.step("neighbours best first"):
        neighbors = serving.best_first(neighbors)
    written = serving.write_model(
        postgres,
        dagster_run_id=context.run.run_id,
        config=cfg,
        snapshot_at=float(post_features["snapshot_at"]),
        tfidf_json=post_features["vocabulary_json"],
        profiles=profiles,
        neighbors=neighbors,
        post_ids=post_features["post_ids"]["post_id"].to_list(),
        timer=timer,
        log=context.log,
    )
    return dg.MaterializeResult(
        value={"model_id": written.model_id, **profiles.to_bundle()},
        metadata={
            "model_id": dg.MetadataValue.int(written.model_id),
            "rows": dg.MetadataValue.int(written.profiles + written.neighbors),
            "profiles": dg.MetadataValue.int(written.profiles),
            "neighbor_lists": dg.MetadataValue.int(written.neighbors),
            "neighbors_per_post": dg.MetadataValue.int(k),
            "bytes": dg.MetadataValue.int(written.bytes),
            "seconds": dg.MetadataValue.float(round(timer.total(), 3)),
            **timer.metadata(),
        },
    )


# ------------------------------------------------------------------------------------------------
# user_recommendations

# The columns of a recommendation row, as _rows_frame renders them (the run's own columns,
# run_id, generated_at and expires_at, are added by swap.copy_rows).
ROW_COLUMNS = (
    "user_id",
    "post_id",
    "score",
    *(f"{name}_score" for name in COMPONENTS),
    "reason",
)
# Users per COPY chunk: bounds the CSV held in memory (about 150 bytes a row).
WRITE_CHUNK_USERS = 5000
REDIS_PIPELINE_USERS = 500


def _weights_of_users(scores_bundle: dict[str, Any]) -> tuple[list[dict[str, float]], np.ndarray]:
    """The weights of each configuration the bundle's users were scored with (the run's first),
    and each user's index into them (a reason is the strongest component under the user's own)."""
    configs = scores_bundle.get("configs") or [scores_bundle["config"]]
    config_of = scores_bundle.get("config_of")
    if config_of is None:
        config_of = np.zeros(int(np.asarray(scores_bundle["user_idx"]).size), np.int32)
    return [dict(c["weights"]) for c in configs], np.asarray(config_of)


def _rows_frame(scores_bundle: dict[str, Any], lo: int, hi: int, timer: Timer) -> pl.DataFrame:
    """The rows of users ``lo..hi`` of a shard's scores, in ROW_COLUMNS."""
    idx = scores_bundle["indices"][lo:hi]
    valid = (idx >= 0).ravel()
    comps = np.ascontiguousarray(scores_bundle["components"][lo:hi].reshape(-1, len(COMPONENTS))[valid])
    weights, config_of = _weights_of_users(scores_bundle)
    with timer.step("reasons", "rust"):
        row_config = np.repeat(config_of[lo:hi], idx.shape[1])[valid]
        if len(weights) == 1 or (row_config == 0).all():
            reasons = feedrank.reasons(comps, weights[0])
        else:
            by_row = np.empty(row_config.size, object)
            for g in np.unique(row_config):
                at = row_config == g
                by_row[at] = feedrank.reasons(np.ascontiguousarray(comps[at]), weights[g])
            reasons = by_row.tolist()
    with timer.step("rows (polars)"):
        user_rows = np.repeat(np.arange(lo, hi), idx.shape[1])[valid]
        return pl.DataFrame(
            {
                "user_id": scores_bundle["user_ids"]["user_id"].gather(user_rows),
                "post_id": scores_bundle["post_ids"]["post_id"].gather(idx.ravel()[valid]),
                "score": scores_bundle["scores"][lo:hi].ravel()[valid],
                **{f"{name}_score": comps[:, i] for i, name in enumerate(COMPONENTS)},
                "reason": pl.Series(reasons, dtype=pl.String),
            }
        )


def write_shard(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    redis_res: RedisResource,
    bundle: dict[str, Any],
    timer: Timer,
    model: RunModel | None = None,
    *,
    own_partition: bool = True,
    before_flip: swap.BeforeFlip | None = None,
) -> dict[str, Any]:
    """One set of users (a shard, or the refresh's): its recommendation run swapped into
    PostgreSQL (``swap.write_run``: readers see the old run or the new one, never a mix), naming
    ``model``'s serving model, then each user's Redis entry. ``own_partition`` and
    ``before_flip`` go to ``swap.write_run``; a run refused there writes nothing to Redis."""
    cfg = bundle["config"]
    n_users = int(bundle["user_idx"].size)
    written = swap.write_run(
        postgres,
        shard=bundle["shard"],
        dagster_run_id=context.run.run_id,
        # the resolved ScoringConfig is the run's record (the API reads cache_ttl_seconds from it),
        # with the experiments it applied (the API reads whether a config arm shaped a page)
        config={**cfg, "snapshot_at": bundle["snapshot_at"], **({"experiments": bundle["experiments"]} if bundle.get("experiments") else {})},
        expires_after_hours=int(cfg["expires_after_hours"]),
        users=n_users,
        columns=ROW_COLUMNS,
        chunks=[(lo, min(lo + WRITE_CHUNK_USERS, n_users)) for lo in range(0, n_users, WRITE_CHUNK_USERS)],
        frame_of=lambda lo, hi, local: _rows_frame(bundle, lo, hi, local),
        log=context.log,
        timer=timer,
        model_id=None if model is None else model.model_id,
        own_partition=own_partition,
        before_flip=before_flip,
    )
    cached = 0
    if written.refused is None:
        # Redis only after the commit: a reader never finds a cached run the table does not have.
        cached = write_cache(
            redis_res, bundle, written.run.id, int(written.run.generated_at), int(cfg["cache_ttl_seconds"]), timer, model
        )
    return {
        "run_id": None if written.run is None else written.run.id,
        "users": n_users if written.refused is None else 0,
        "rows": written.rows,
        "cached_users": cached,
        "runs_removed": written.runs_removed,
        "expired_rows_removed": written.expired_rows_removed,
        "models_removed": written.cleaned.models,
        "refused": written.refused,
    }


def write_cache(
    redis_res: RedisResource,
    bundle: dict[str, Any],
    run_id: int,
    generated_at: int,
    ttl: int,
    timer: Timer,
    model: RunModel | None = None,
) -> int:
    """Each user's list as the shared cache entry (feedrank.encode_cache_entry), with the run's
    model id and the user's stored profile in it (``model``), pipelined."""
    weights, config_of = _weights_of_users(bundle)
    post_ids = bundle["post_ids"]["post_id"].to_numpy()
    user_ids = bundle["user_ids"]["user_id"].to_list()
    user_idx = np.asarray(bundle["user_idx"])
    indices, scores, components = bundle["indices"], bundle["scores"], bundle["components"]
    model_id = None if model is None else model.model_id
    profile_of = (lambda user: None) if model is None else model.profiles.for_cache(model.profiles.user_ids["user_id"].to_list())
    client = redis_res.client()
    prefix = redis_res.prefix()
    written = 0
    encode_s = send_s = 0.0
    try:
        pipe = client.pipeline(transaction=False)
        for row, user_id in enumerate(user_ids):
            idx = indices[row]
            n = int((idx >= 0).sum())  # -1 padding only at the end
            ids = post_ids[idx[:n]].tolist()
            t = time.perf_counter()
            entry = feedrank.encode_cache_entry(
                run_id,
                generated_at,
                ids,
                scores[row, :n],
                components[row, :n],
                weights[config_of[row]],
                model_id=model_id,
                profile=profile_of(int(user_idx[row])),
            )
            key = feedrank.recommendations_key(prefix, user_id)
            encode_s += time.perf_counter() - t
            pipe.set(key, entry, ex=ttl)
            written += 1
            if written % REDIS_PIPELINE_USERS == 0:
                t = time.perf_counter()
                pipe.execute()
                send_s += time.perf_counter() - t
        t = time.perf_counter()
        pipe.execute()
        send_s += time.perf_counter() - t
    finally:
        client.close()
    timer.add("redis entries", "rust", encode_s)
    timer.add("redis send", "io", send_s)
    return written


def user_recommendations(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    redis: RedisResource,
    recommendation_scores: dict[str, Any],
    serving_model: dict[str, Any],
) -> dg.MaterializeResult:
    """Recommendations written to PostgreSQL (one recommendation run per shard, naming the run's
    serving model, rows by COPY into a partition of their own, swapped in by one short
    transaction; older, failed and expired runs and unused models removed) and, after the commit,
    each user's list, the model's id and the user's profile to Redis (feedrank cache entry, TTL
    cache_ttl_seconds)."""
    timer = Timer()
    shards = _shards(context)
    bundles = recommendation_scores if len(shards) > 1 else {shards[0]: recommendation_scores}
    model = RunModel(int(serving_model["model_id"]), StoredProfiles.from_bundle(serving_model))
    results = {shard: write_shard(context, postgres, redis, bundles[shard], timer, model) for shard in shards}
    total = lambda key: sum(r[key] for r in results.values())  # noqa: E731
    return dg.MaterializeResult(
        metadata={
            "recommendation_runs": dg.MetadataValue.json({s: r["run_id"] for s, r in results.items()}),
            "model_id": dg.MetadataValue.int(model.model_id),
            "users": dg.MetadataValue.int(total("users")),
            "rows": dg.MetadataValue.int(total("rows")),
            "cached_users": dg.MetadataValue.int(total("cached_users")),
            "runs_removed": dg.MetadataValue.int(total("runs_removed")),
            "expired_rows_removed": dg.MetadataValue.int(total("expired_rows_removed")),
            "models_removed": dg.MetadataValue.int(total("models_removed")),
            **timer.metadata(),
        },
    )


# ------------------------------------------------------------------------------------------------
# the asset definitions


SCORES_VALID = dg.AssetCheckSpec(
    "scores_valid",
    asset="recommendation_scores",
    blocking=True,
    description="Scores finite and within [0, sum(weights)], components in [0, 1], no post of the "
    "user's own, none the user hid, no duplicates. Blocks the write.",
)


def build_assets(shards: dg.PartitionsDefinition | None = None) -> list[dg.AssetsDefinition]:
    """The six assets (each function's docstring is its description in the UI). With ``shards``
    (user-shard partitions), ``recommendation_scores`` and ``user_recommendations`` are
    partitioned, and every asset gets a single-run backfill policy so that one run (the
    schedule's, or ``dagster asset materialize --partition-range``) can cover a range of shards."""
    policy = dg.BackfillPolicy.single_run() if shards is not None else None

    def asset(fn, kinds: set[str], *, sharded: bool = False, **extra: Any) -> dg.AssetsDefinition:
        partitions = shards if sharded else None
        return dg.asset(kinds=kinds, backfill_policy=policy, partitions_def=partitions, **extra)(fn)

    return [
        asset(user_interactions_snapshot, {"postgres", "polars"}),
        asset(post_features, {"rust", "numpy"}),
        asset(user_features, {"scipy", "numpy"}),
        asset(serving_model, {"rust", "postgres"}),
        asset(recommendation_scores, {"rust"}, sharded=True, check_specs=[SCORES_VALID]),
        asset(user_recommendations, {"postgres", "redis"}, sharded=True),
    ]
