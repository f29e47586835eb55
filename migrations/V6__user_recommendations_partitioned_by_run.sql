-- user_recommendations becomes a table partitioned by run (LIST on run_id): the pipeline loads a
-- run's rows into a table of their own without indexes, builds the indexes in bulk, then attaches
-- it as a partition in the transaction that marks the run complete; a superseded run is detached
-- and dropped as a table instead of deleted row by row. (At 100,000 users x 200 posts, per-row
-- index maintenance on one shared table was most of the pipeline's time, and deleting the old
-- run's 20 million rows would have been as slow again.)
--
-- Rows written directly for a run without a partition of its own (small ad-hoc writes, e.g. by
-- tests or by hand) land in the DEFAULT partition and behave as before. Readers are unchanged:
-- they query user_recommendations, and current_recommendation_run() picks the run.

ALTER TABLE user_recommendations RENAME TO user_recommendations_unpartitioned;
ALTER TABLE user_recommendations_unpartitioned
    RENAME CONSTRAINT user_recommendations_pkey TO user_recommendations_unpartitioned_pkey;
ALTER TABLE user_recommendations_unpartitioned
    RENAME CONSTRAINT user_recommendations_run_id_fkey TO user_recommendations_unpartitioned_run_id_fkey;
ALTER TABLE user_recommendations_unpartitioned
    RENAME CONSTRAINT user_recommendations_user_id_fkey TO user_recommendations_unpartitioned_user_id_fkey;
ALTER TABLE user_recommendations_unpartitioned
    RENAME CONSTRAINT user_recommendations_post_id_fkey TO user_recommendations_unpartitioned_post_id_fkey;
ALTER INDEX idx_user_recommendations_user_run_score
    RENAME TO idx_user_recommendations_unpartitioned_user_run_score;
ALTER INDEX idx_user_recommendations_expires_at
    RENAME TO idx_user_recommendations_unpartitioned_expires_at;
ALTER INDEX idx_user_recommendations_post_id
    RENAME TO idx_user_recommendations_unpartitioned_post_id;

CREATE TABLE user_recommendations (
    run_id              bigint NOT NULL REFERENCES recommendation_runs (id) ON DELETE CASCADE,
    user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id             uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    score               double precision NOT NULL,
    -- Each component's value beside the final score, so the feed can say why a post was chosen.
    collaborative_score double precision NOT NULL DEFAULT 0,
    content_score       double precision NOT NULL DEFAULT 0,
    recency_score       double precision NOT NULL DEFAULT 0,
    engagement_score    double precision NOT NULL DEFAULT 0,
    reason              text NOT NULL DEFAULT 'popular',
    generated_at        timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    CONSTRAINT user_recommendations_pkey PRIMARY KEY (run_id, user_id, post_id)
) PARTITION BY LIST (run_id);

-- Serves "this user's recommendations of one run, by score".
CREATE INDEX idx_user_recommendations_user_run_score
    ON user_recommendations (user_id, run_id DESC, score DESC);
CREATE INDEX idx_user_recommendations_expires_at ON user_recommendations (expires_at);
-- Serves the ON DELETE CASCADE from posts.
CREATE INDEX idx_user_recommendations_post_id ON user_recommendations (post_id);

CREATE TABLE user_recommendations_default PARTITION OF user_recommendations DEFAULT;

INSERT INTO user_recommendations
    (run_id, user_id, post_id, score, collaborative_score, content_score, recency_score,
     engagement_score, reason, generated_at, expires_at)
SELECT run_id, user_id, post_id, score, collaborative_score, content_score, recency_score,
       engagement_score, reason, generated_at, expires_at
FROM user_recommendations_unpartitioned;
DROP TABLE user_recommendations_unpartitioned;

-- The trigger of V5 on the new table (the old one went with the old table).
CREATE TRIGGER feedrank_recommendations_added AFTER INSERT OR UPDATE ON user_recommendations
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_recommendations_changed();
ALTER TABLE user_recommendations ENABLE ALWAYS TRIGGER feedrank_recommendations_added;
