-- Experiments (issue 14, part 3): named splits of users into arms, written by
-- `feedrank experiments create|start|stop` after the core has validated them
-- (rust/core/src/experiment.rs), read by the API, which assigns each user an arm per running
-- experiment and labels the page (metadata.arms, served_pages.arms).
--
-- definition is the core's normalized JSON of the experiment (name, salt, times, arms); name,
-- salt, starts_at and ends_at are copies of its fields for constraints and queries, kept equal to
-- it by the checks below. stopped_at is not part of the definition: it records `stop`.
CREATE TABLE experiments (
    name       text PRIMARY KEY,
    -- two experiments on one salt would split users identically: never independent layers
    salt       text NOT NULL CONSTRAINT experiments_salt_key UNIQUE,
    definition jsonb NOT NULL,
    -- NULL: not started
    starts_at  timestamptz,
    -- NULL: runs until stopped
    ends_at    timestamptz,
    stopped_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT experiments_definition_matches CHECK (
        definition ->> 'name' = name
        AND definition ->> 'salt' = salt
        AND (definition ->> 'starts_at')::timestamptz IS NOT DISTINCT FROM starts_at
        AND (definition ->> 'ends_at')::timestamptz IS NOT DISTINCT FROM ends_at
    ),
    CONSTRAINT experiments_ends_after_start CHECK (ends_at > starts_at)
);

-- The API keeps the experiments in process; this tells it to read them again (it also reads
-- them every few seconds, in case a message is missed). Statement-level and payload-free, as
-- V5's feedrank_recommendations_changed.
CREATE FUNCTION feedrank_notify_experiments_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('feedrank_experiments_changed', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER feedrank_experiments_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON experiments
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_experiments_changed();
