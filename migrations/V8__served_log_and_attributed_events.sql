-- The served log (issue 14): which posts the API served to whom, at which position, from which
-- source and run, so that a click can be divided by its impressions. The API writes it in the
-- background (api/src/served_log.rs), batched with COPY, never on the request path.
--
-- One row per served feed page, its posts packed in byte strings: at the cached feed's rate (about
-- 9,000 pages of 50 posts a second on 2 cores) one row per post would be 450,000 rows a second,
-- more than one PostgreSQL core can COPY; a page row costs about a thirteenth of that, and packed
-- bytes (one copy each) cost COPY and the API's encoder less again than uuid[] and smallint[]
-- (whose elements are framed and checked one by one): with arrays, the log took a fifth of the
-- cached feed's throughput on 2 cores. Readers use the view served_impressions (one row per
-- served post), never the packed columns.

-- The codes of the page rows' source_codes and reason_codes: one byte each (1-255; 0 in
-- reason_codes: no reason). The codes are fixed here and in served_log.rs (a test compares them
-- with the core's Source and Reason); a new source or reason gets a new code, never a reused one.
CREATE TABLE served_sources (
    code smallint PRIMARY KEY,
    name text NOT NULL UNIQUE
);
INSERT INTO served_sources (code, name) VALUES
    (1, 'personalized'), (2, 'fresh'), (3, 'because_you_liked'), (4, 'trending'), (5, 'fallback');

CREATE TABLE served_reasons (
    code smallint PRIMARY KEY,
    name text NOT NULL UNIQUE
);
INSERT INTO served_reasons (code, name) VALUES
    (1, 'similar_users'), (2, 'similar_content'), (3, 'fresh'), (4, 'popular'),
    (5, 'liked_author'), (6, 'because_you_liked'), (7, 'trending');

-- Partitioned by UTC day of served_at: retention drops whole partitions. No foreign keys: a log
-- outlives the users and posts it names, and COPY should not look each of them up.
CREATE TABLE served_pages (
    -- metadata.requestId of the response; tracked events name it (user_interactions.request_id)
    request_id     uuid NOT NULL,
    user_id        uuid NOT NULL,
    -- the position of post_ids[1] in the whole feed, 0-based: the page's offset
    first_position integer NOT NULL CHECK (first_position >= 0),
    -- the posts in the order served, 16 bytes each; source_codes and reason_codes run beside
    -- them, a byte per post (reason 0: none, the fallback's)
    post_ids       bytea NOT NULL,
    source_codes   bytea NOT NULL,
    reason_codes   bytea NOT NULL,
    -- the recommendation run whose list the page blended (metadata.source cache or db); NULL for
    -- a page without the user's list
    run_id         bigint,
    -- the configuration version: that run's serving model (recommendation_models.id, whose
    -- config column is the resolved ScoringConfig); NULL when the run has none
    model_id       bigint,
    -- experiment arms the user was in (none until experiments exist)
    arms           text[] NOT NULL DEFAULT '{}',
    served_at      timestamptz NOT NULL,
    CHECK (length(post_ids) = 16 * length(source_codes)
           AND length(reason_codes) = length(source_codes))
) PARTITION BY RANGE (served_at);

-- Attribution: an event's request id finds its page.
CREATE INDEX idx_served_pages_request_id ON served_pages (request_id);

-- One row per served post. position is 0-based in the whole feed (the page's offset plus the
-- post's index in the page as served).
CREATE VIEW served_impressions AS
SELECT p.request_id,
       p.user_id,
       encode(substring(p.post_ids FROM 16 * i.n + 1 FOR 16), 'hex')::uuid AS post_id,
       p.first_position + i.n AS position,
       s.name AS source,
       r.name AS reason,
       p.run_id,
       p.model_id,
       p.arms,
       p.served_at
FROM served_pages p
CROSS JOIN LATERAL generate_series(0, length(p.source_codes) - 1) AS i (n)
JOIN served_sources s ON s.code = get_byte(p.source_codes, i.n)
LEFT JOIN served_reasons r ON r.code = get_byte(p.reason_codes, i.n);

-- The partitions of served_pages: one per UTC day, named served_pages_YYYYMMDD, created for
-- `today` and the `days_ahead` days after it; partitions of days before today - retention_days
-- are dropped. The API's served-log writer calls it at start and hourly (and whenever a batch
-- falls outside what it prepared). Idempotent; concurrent callers (several API processes) take
-- turns on an advisory lock.
CREATE FUNCTION served_pages_maintain(today date, days_ahead integer, retention_days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    day date;
    part text;
    old text;
BEGIN
    IF days_ahead < 0 OR retention_days < 1 THEN
        RAISE EXCEPTION 'served_pages_maintain: days_ahead must be >= 0 and retention_days >= 1, got % and %',
            days_ahead, retention_days;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('served_pages_maintain'));
    FOR day IN SELECT generate_series(today, today + days_ahead, interval '1 day')::date LOOP
        part := 'served_pages_' || to_char(day, 'YYYYMMDD');
        -- (checked first rather than IF NOT EXISTS, whose notice every hourly call would send)
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF served_pages FOR VALUES FROM (%L) TO (%L)',
                           part,
                           day::timestamp AT TIME ZONE 'UTC',
                           (day + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
    FOR old IN
        SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
        WHERE h.inhparent = 'served_pages'::regclass
          AND c.relname ~ '^served_pages_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < today - retention_days
    LOOP
        EXECUTE format('DROP TABLE %I', old);
    END LOOP;
END $$;

-- Attributed events: the feed response (metadata.requestId) and the post's position in it that
-- a tracked event came from. Stored as given: the served log may lag or have dropped the page.
ALTER TABLE user_interactions
    ADD COLUMN request_id uuid,
    ADD COLUMN position integer CONSTRAINT user_interactions_position_check
        CHECK (position IS NULL OR position >= 0);
-- Attribution joins events to their pages; most events carry no request id.
CREATE INDEX idx_user_interactions_request_id ON user_interactions (request_id)
    WHERE request_id IS NOT NULL;
