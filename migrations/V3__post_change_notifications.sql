-- The API keeps post bodies (with their author's name and avatar) in process, so that the cached
-- feed does not ask PostgreSQL for every page. These triggers tell it when to forget them:
-- NOTIFY feedrank_post_changed with a post id, or '*' for "forget everything", after posts are
-- updated or deleted (also by a cascade), truncated, or after an author's shown fields change.
-- Statement-level triggers with transition tables: a bulk change sends one '*', not a message
-- per row. (The API also expires its copies after POST_CACHE_TTL_SECS, in case one is missed.)

CREATE FUNCTION feedrank_notify_posts_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
    r record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('feedrank_post_changed', '*');
        RETURN NULL;
    END IF;
    SELECT count(*) INTO changed FROM old_rows;
    IF changed > 100 THEN
        PERFORM pg_notify('feedrank_post_changed', '*');
    ELSE
        FOR r IN SELECT id FROM old_rows LOOP
            PERFORM pg_notify('feedrank_post_changed', r.id::text);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- A trigger with a transition table serves one event, hence one trigger per event.
CREATE TRIGGER feedrank_posts_updated AFTER UPDATE ON posts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_posts_changed();
CREATE TRIGGER feedrank_posts_deleted AFTER DELETE ON posts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_posts_changed();
CREATE TRIGGER feedrank_posts_truncated AFTER TRUNCATE ON posts
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_posts_changed();

CREATE FUNCTION feedrank_notify_authors_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('feedrank_post_changed', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER feedrank_authors_updated AFTER UPDATE OF username, display_name, avatar_url ON users
    FOR EACH STATEMENT EXECUTE FUNCTION feedrank_notify_authors_changed();
