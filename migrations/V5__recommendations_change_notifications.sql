-- The API remembers, in process, which users PostgreSQL has no current recommendations for (their
-- feed is the random fallback), so that it does not ask again on every request. This trigger
-- tells it to forget all of that whenever recommendations may have appeared: a run inserted or
-- changed (the pipeline flips a run to 'complete'), or rows added to user_recommendations.
-- Statement-level and payload-free: one message per statement (PostgreSQL folds duplicates within
-- a transaction), however many rows. ENABLE ALWAYS: it fires even under
-- session_replication_role = replica, which the pipeline's bulk write may use.

CREATE FUNCTION feedrank_notify_recommendations_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('feedrank_recommendations_changed', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER feedrank_runs_changed AFTER INSERT OR UPDATE ON recommendation_runs
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_recommendations_changed();
CREATE TRIGGER feedrank_recommendations_added AFTER INSERT OR UPDATE ON user_recommendations
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_recommendations_changed();
ALTER TABLE recommendation_runs ENABLE ALWAYS TRIGGER feedrank_runs_changed;
ALTER TABLE user_recommendations ENABLE ALWAYS TRIGGER feedrank_recommendations_added;
