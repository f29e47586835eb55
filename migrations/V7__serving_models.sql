-- What the request-time sources of the feed read (issue 13): per Dagster run of the pipeline, one
-- serving model (the fitted TF-IDF and the resolved ScoringConfig), each user's stored profile in
-- that model's vocabulary, and each post's item-item neighbours. A recommendation run names the
-- model it was built with; the API finds a user's profile and the neighbours of what they liked
-- through the model of the user's current run.
--
-- A model is written whole before any run names it, and deleted (with its profiles and
-- neighbours, by cascade) by the pipeline's clean-up once no complete run names it.

CREATE TABLE recommendation_models (
    id             bigserial PRIMARY KEY,
    dagster_run_id text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- the data the model was built from: the pipeline's snapshot of users, posts and interactions
    snapshot_at    timestamptz NOT NULL,
    -- the resolved ScoringConfig (rust/core/src/config.rs)
    config         jsonb NOT NULL,
    -- the fitted TfidfModel::to_json() (vocabulary and idf): TfidfModel::from_json reads it
    tfidf          text NOT NULL
);

-- Runs written before this migration have no model (NULL): the feed serves them without the
-- sources that need one.
ALTER TABLE recommendation_runs
    ADD COLUMN model_id bigint REFERENCES recommendation_models (id) ON DELETE SET NULL;
-- Serves the clean-up's "is this model still named by a run" and the SET NULL on a model delete.
CREATE INDEX idx_recommendation_runs_model_id ON recommendation_runs (model_id);

-- A user's profile as the pipeline computed it (feedrank_core::profile): the strongest terms of
-- the hybrid's content profile (term indices of the model's vocabulary, ascending, and their
-- weights) and the user's affinity to authors (author ids, ascending, and affinities in (0, 1]).
CREATE TABLE user_profiles (
    model_id       bigint NOT NULL REFERENCES recommendation_models (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    terms          int4[] NOT NULL,
    weights        float4[] NOT NULL,
    authors        uuid[] NOT NULL,
    author_weights float4[] NOT NULL,
    PRIMARY KEY (model_id, user_id)
);
-- The API's read (a user's profile in their run's model); also the cascade of a user's delete.
CREATE INDEX idx_user_profiles_user_model ON user_profiles (user_id, model_id);
-- A profile of 256 terms and 32 authors is about 3 KB: kept in the row (compressed if it helps)
-- rather than moved out to TOAST, so a read is one heap fetch.
ALTER TABLE user_profiles
    ALTER COLUMN terms SET STORAGE MAIN,
    ALTER COLUMN weights SET STORAGE MAIN,
    ALTER COLUMN authors SET STORAGE MAIN,
    ALTER COLUMN author_weights SET STORAGE MAIN;

-- A post's item-item cosine neighbours on the interaction matrix (feedrank.item_neighbors, k =
-- sources.because_you_liked.neighbors), best first, for every post that has any.
CREATE TABLE post_neighbors (
    model_id  bigint NOT NULL REFERENCES recommendation_models (id) ON DELETE CASCADE,
    post_id   uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    neighbors uuid[] NOT NULL,
    scores    float4[] NOT NULL,
    -- also the API's read: the neighbours of the posts a user liked, in their run's model
    PRIMARY KEY (model_id, post_id)
);
-- Serves the cascade of a post's delete (the primary key leads with the model).
CREATE INDEX idx_post_neighbors_post_id ON post_neighbors (post_id);
