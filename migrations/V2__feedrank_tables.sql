-- feedrank's own tables: tracked interactions and pre-computed recommendations.

CREATE TABLE user_interactions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id          uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    interaction_type varchar(20) NOT NULL
        CONSTRAINT user_interactions_type_check
        CHECK (interaction_type IN ('view', 'click', 'like', 'share', 'hide')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    metadata         jsonb CONSTRAINT user_interactions_metadata_object
        CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    -- Optional client event id: a client that retries a tracking request sends the same id and
    -- the event is stored once. NULLs are distinct, so events without an id never collide.
    event_id         text CONSTRAINT user_interactions_event_id_length
        CHECK (event_id IS NULL OR length(event_id) BETWEEN 1 AND 128),
    CONSTRAINT user_interactions_user_event_unique UNIQUE (user_id, event_id)
);

CREATE INDEX idx_user_interactions_user_id ON user_interactions (user_id, created_at);
CREATE INDEX idx_user_interactions_post_id ON user_interactions (post_id);
CREATE INDEX idx_user_interactions_created_at ON user_interactions (created_at);

-- One row per pipeline run (or per user shard of a run). Rows of user_recommendations carry the
-- run id; a run's rows become visible in one step, when its status turns 'complete'. A reader
-- sees, per user, the newest complete run that covers that user (current_user_recommendations),
-- so it sees the old set or the new set, never a mix, and a run that dies leaves the old one.
CREATE TABLE recommendation_runs (
    id             bigserial PRIMARY KEY,
    status         text NOT NULL DEFAULT 'building'
        CONSTRAINT recommendation_runs_status_check
        CHECK (status IN ('building', 'complete', 'failed')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    shard          text,
    dagster_run_id text,
    config         jsonb NOT NULL DEFAULT '{}'::jsonb,
    users_count    integer,
    rows_count     bigint
);

CREATE TABLE user_recommendations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
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
    CONSTRAINT user_recommendations_run_user_post_unique UNIQUE (run_id, user_id, post_id)
);

-- Serves "this user's recommendations of one run, by score".
CREATE INDEX idx_user_recommendations_user_run_score
    ON user_recommendations (user_id, run_id DESC, score DESC);
CREATE INDEX idx_user_recommendations_expires_at ON user_recommendations (expires_at);
CREATE INDEX idx_user_recommendations_post_id ON user_recommendations (post_id);

-- The one definition of "a user's current recommendation run": the newest complete run that has
-- rows for that user. Readers select
--   WHERE user_id = $1 AND run_id = current_recommendation_run($1) AND expires_at > now()
-- which PostgreSQL answers from idx_user_recommendations_user_run_score.
CREATE FUNCTION current_recommendation_run(p_user_id uuid) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT r.run_id
    FROM user_recommendations r
    JOIN recommendation_runs rr ON rr.id = r.run_id AND rr.status = 'complete'
    WHERE r.user_id = p_user_id
    ORDER BY r.run_id DESC
    LIMIT 1
$$;
