-- user_recommendations: the natural key (run_id, user_id, post_id) becomes the primary key and the
-- surrogate `id uuid` column goes. Nothing reads `id` (the API, the pipeline and its checks all
-- address rows by run, user and post), and writing it cost the pipeline's COPY a gen_random_uuid()
-- and one more B-tree insertion per row. The unique constraint it replaces enforced the same key.
-- Kept: idx_user_recommendations_user_run_score (the API's read path),
-- idx_user_recommendations_post_id (ON DELETE CASCADE of a post), _expires_at (the clean-up),
-- and the primary key also serves ON DELETE CASCADE of a recommendation run (run_id leads).

ALTER TABLE user_recommendations DROP COLUMN id;
ALTER TABLE user_recommendations DROP CONSTRAINT user_recommendations_run_user_post_unique;
ALTER TABLE user_recommendations ADD CONSTRAINT user_recommendations_pkey
    PRIMARY KEY (run_id, user_id, post_id);
