#!/usr/bin/env bash
# `make bench-api`: the API under wrk on loopback, with every service on this machine.
#
#   1. a database of its own (BENCH_DATABASE_URL, default .../feedrank_bench) with
#      `feedrank demo-data` at 100,000 users and 1,000,000 posts (loaded once, kept for reruns);
#   2. a complete recommendation run for 1,000 users (200 posts each, written by SQL: this
#      measures serving, not the pipeline), warmed into Redis through the API itself;
#   3. the release API on 127.0.0.1:$BENCH_PORT with its own Redis key prefix, then wrk:
#      feed from the cache, the random fallback (1,000 other users), tracking (unique event ids);
#   4. after tracking, the stored row count is compared with the 201 answers counted by wrk;
#   5. every source on: 1,000 more users whose run names a serving model (built once by the
#      pipeline's own assets, api/bench/serving_model.py), 10,000 posts newer than their lists and
#      3 likes each since them, so a page blends personalized, fresh, because_you_liked and
#      trending (the counters the tracking phase left).
#
# Knobs: BENCH_DURATION (15s), BENCH_CONNECTIONS (64), BENCH_USERS/POSTS/INTERACTIONS, BENCH_PORT;
# BENCH_PUBLISH_RATE (10): posts published a second during the every-source phase (167: a flood);
# BENCH_COLD (5s): how long the every-source phase first runs as a cold start (printed as its own row);
# BENCH_PHASES (default "cache fallback track sources"): the wrk phases to run, e.g. "track sources"
# to measure the every-source feed alone (it reads the trending counters the track phase leaves:
# without it the trending source is empty); BENCH_API: the API binary (default
# target/release/feedrank-api), to compare two builds on the same data;
# the API's own variables pass through (FEEDRANK_SERVED_LOG=0 measures without the served log).
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH_DIR=$PWD/api/bench
export BENCH_DIR

DB=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/feedrank_bench}
ADMIN=${DB%/*}/postgres
USERS=${BENCH_USERS:-100000}
POSTS=${BENCH_POSTS:-1000000}
INTERACTIONS=${BENCH_INTERACTIONS:-2000000}
DURATION=${BENCH_DURATION:-15s}
CONNS=${BENCH_CONNECTIONS:-64}
PUBLISH_RATE=${BENCH_PUBLISH_RATE:-10}
PORT=${BENCH_PORT:-18099}
API=${BENCH_API:-target/release/feedrank-api}
PHASES=" ${BENCH_PHASES:-cache fallback track sources} "
phase() { [[ $PHASES == *" $1 "* ]]; }
PREFIX="bench:$$:"
WORK=$(mktemp -d)
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
API_PID=

cleanup() {
    if [[ -n $API_PID ]]; then kill "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true; fi
    redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/0}" --scan --pattern "${PREFIX}*" 2>/dev/null |
        xargs -r -n 500 redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/0}" del >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '==> %s\n' "$*"; }

if ! command -v wrk >/dev/null; then
    say "installing wrk (Debian package)"
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
[[ -x $API ]] || { echo "bench-api: $API is missing (make api)"; exit 1; }

# --- 1. data ------------------------------------------------------------------------------------
dbname=${DB##*/}
if [[ -z $(psql "$ADMIN" -tAc "SELECT 1 FROM pg_database WHERE datname = '$dbname'") ]]; then
    psql "$ADMIN" -qc "CREATE DATABASE $dbname"
fi
DATABASE_URL=$DB "$API" migrate >/dev/null
have=$(psql "$DB" -tAc "SELECT count(*) FROM posts")
if (( have < POSTS )); then
    say "loading demo data: $USERS users, $POSTS posts, $INTERACTIONS interactions (once; several minutes)"
    .venv/bin/feedrank demo-data --reset --users "$USERS" --posts "$POSTS" \
        --interactions "$INTERACTIONS" --database-url "$DB"
fi
# Events tracked by earlier runs would make the benchmark users' seen sets grow from run to run
# (the cached feed filters them on every request): each run starts from the demo data alone.
psql "$DB" -qc "DELETE FROM user_interactions WHERE event_id LIKE 'bench-%'"
say "data: $(psql "$DB" -tAc "SELECT count(*) FROM users") users, $(psql "$DB" -tAc "SELECT count(*) FROM posts") posts, $(psql "$DB" -tAc "SELECT count(*) FROM user_interactions") interactions"

# --- 2. recommendations for 1,000 users ---------------------------------------------------------
# bench_run SHARD USERS MODEL: a complete run of SHARD for the users the query USERS selects, 200
# posts each with random scores (written by SQL: this measures serving, not the pipeline), naming
# the serving model MODEL (or NULL); kept a day, then written again. Prints its users.
bench_run() {
    psql "$DB" -q -v ON_ERROR_STOP=1 <<SQL
CREATE TEMP TABLE run_users AS $2;
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM recommendation_runs WHERE shard = '$1' AND status = 'complete'
                 AND model_id IS NOT DISTINCT FROM $3 AND completed_at > now() - interval '1 day') THEN
    DELETE FROM recommendation_runs WHERE shard = '$1';
    CREATE TEMP TABLE cand AS
      SELECT id, row_number() OVER () AS rn FROM (SELECT id FROM posts WHERE content NOT LIKE 'bench-fresh %'
                                                  ORDER BY created_at DESC LIMIT 50000) p;
    WITH run AS (INSERT INTO recommendation_runs (status, shard, completed_at, model_id)
                 VALUES ('building', '$1', now(), $3) RETURNING id)
    INSERT INTO user_recommendations (run_id, user_id, post_id, score, collaborative_score, content_score,
                                      recency_score, engagement_score, reason, expires_at)
    SELECT run.id, u.id, c.id, random(), random(), random(), random(), random(),
           (ARRAY['similar_users', 'similar_content', 'fresh', 'popular'])[1 + (g % 4)], now() + interval '2 days'
    FROM run CROSS JOIN run_users u CROSS JOIN generate_series(1, 200) g
    JOIN cand c ON c.rn = 1 + abs(hashtext(u.id::text || ':' || g::text)) % 50000
    ON CONFLICT DO NOTHING;
    UPDATE recommendation_runs SET status = 'complete' WHERE shard = '$1';
  END IF;
END \$\$;
SQL
    psql "$DB" -tAc "SELECT user_id FROM user_recommendations r JOIN recommendation_runs rr ON rr.id = r.run_id
                     WHERE rr.shard = '$1' GROUP BY user_id ORDER BY user_id"
}
bench_run bench-api "SELECT id FROM users ORDER BY id LIMIT 1000" NULL >"$WORK/rec_users"

# --- 2b. every source on ------------------------------------------------------------------------
# A serving model (the fitted TF-IDF, users' profiles, posts' neighbours) from the pipeline's own
# assets, built once and kept; a run for the next 1,000 users (with a profile) that names it;
# 10,000 posts newer than those lists (copies of existing texts, made again every run) and 3 likes
# per user since the lists (event ids bench-*: deleted by the next run, above).
model=$(psql "$DB" -tAc "SELECT max(id) FROM recommendation_models")
if [[ -z $model ]]; then
    say "building a serving model with the pipeline's assets (once; a few minutes)"
    model=$(DATABASE_URL=$DB PYTHONPATH=$PWD .venv/bin/python -W ignore api/bench/serving_model.py 2>"$WORK/model.log" | tail -1) ||
        { tail -20 "$WORK/model.log"; echo "bench-api: the serving model could not be built"; exit 1; }
fi
bench_run bench-api-sources "SELECT u.id FROM users u JOIN user_profiles p ON p.user_id = u.id AND p.model_id = $model
                             ORDER BY u.id OFFSET 1000 LIMIT 1000" "$model" >"$WORK/source_users"
psql "$DB" -q -v ON_ERROR_STOP=1 -v model="$model" <<'SQL'
-- fresh posts: created after the model's snapshot and the lists, within the last 30 minutes
DELETE FROM posts WHERE content LIKE 'bench-fresh %';
INSERT INTO posts (user_id, content, created_at)
SELECT s.user_id, 'bench-fresh ' || s.content,
       now() - random() * least(interval '30 minutes', now() - greatest(m.snapshot_at, r.generated_at))
FROM (SELECT user_id, content FROM posts TABLESAMPLE SYSTEM (3) LIMIT 10000) s
CROSS JOIN (SELECT snapshot_at FROM recommendation_models WHERE id = :model) m
CROSS JOIN (SELECT max(generated_at) AS generated_at FROM user_recommendations ur
            JOIN recommendation_runs rr ON rr.id = ur.run_id WHERE rr.shard = 'bench-api-sources') r;
-- likes since the lists, of posts the model has neighbours for
CREATE TEMP TABLE liked AS
  SELECT post_id, row_number() OVER () AS rn
  FROM (SELECT post_id FROM post_neighbors TABLESAMPLE SYSTEM (1) WHERE model_id = :model LIMIT 3000) n;
CREATE TEMP TABLE likers AS
  SELECT ur.user_id AS id, dense_rank() OVER (ORDER BY ur.user_id) AS rn
  FROM (SELECT DISTINCT r.user_id FROM user_recommendations r JOIN recommendation_runs rr ON rr.id = r.run_id
        WHERE rr.shard = 'bench-api-sources') ur;
INSERT INTO user_interactions (user_id, post_id, interaction_type, event_id, created_at)
SELECT u.id, l.post_id, 'like', 'bench-like-' || u.id || '-' || g, now()
FROM likers u CROSS JOIN generate_series(1, 3) g
JOIN liked l ON l.rn = 1 + ((u.rn - 1) * 3 + g - 1) % (SELECT count(*) FROM liked);
SQL
psql "$DB" -tAc "SELECT id FROM users u WHERE NOT EXISTS (SELECT 1 FROM user_recommendations r WHERE r.user_id = u.id)
                 ORDER BY id LIMIT 1000" >"$WORK/fallback_users"
psql "$DB" -tAc "SELECT id FROM posts TABLESAMPLE SYSTEM (2) LIMIT 10000" >"$WORK/posts"
say "$(wc -l <"$WORK/rec_users") users with recommendations, $(wc -l <"$WORK/fallback_users") without"

# --- 3. the API ---------------------------------------------------------------------------------
AUTH_SECRET=$SECRET "$API" token --user $(tr '\n' ' ' <"$WORK/rec_users" | sed 's/ / --user /g; s/ --user $//') >"$WORK/rec_tokens"
AUTH_SECRET=$SECRET "$API" token --user $(tr '\n' ' ' <"$WORK/fallback_users" | sed 's/ / --user /g; s/ --user $//') >"$WORK/fallback_tokens"
AUTH_SECRET=$SECRET "$API" token --user $(tr '\n' ' ' <"$WORK/source_users" | sed 's/ / --user /g; s/ --user $//') >"$WORK/source_tokens"
AUTH_SECRET=$SECRET DATABASE_URL=$DB REDIS_KEY_PREFIX=$PREFIX BIND_ADDR=127.0.0.1:$PORT \
    RUST_LOG=${RUST_LOG:-warn} "$API" serve >"$WORK/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$WORK/api.log"; echo "bench-api: the API is not ready"; exit 1; }
URL="http://127.0.0.1:$PORT"

say "warming the cache through the API (each user's first feed comes from the database)"
cat "$WORK/rec_tokens" "$WORK/source_tokens" |
    xargs -P 4 -I{} curl -sf -o /dev/null -H "Authorization: Bearer {}" "$URL/api/feeds?limit=50"
sample=$(curl -sf -H "Authorization: Bearer $(head -1 "$WORK/rec_tokens")" "$URL/api/feeds?limit=50")
python3 -c 'import json,sys; m=json.loads(sys.argv[1])["metadata"]; print("    sample page: source=%s total=%s limit=%s" % (m["source"], m["total"], m["limit"]))' "$sample"
metric() { curl -sf "$URL/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }

# The API's CPU time (user + system, clock ticks): on a shared machine its CPU per request varies
# far less than its requests/s, so each phase prints both.
api_ticks() { awk '{ print $14 + $15 }' "/proc/$API_PID/stat"; }
run_wrk() { # name script tokens [path]
    local t0 t1 out
    t0=$(api_ticks)
    out=$(BENCH_NAME=$1 BENCH_TOKENS=$3 BENCH_PATH=${4:-/api/feeds?limit=50} BENCH_POSTS=$WORK/posts \
        wrk -t2 -c"$CONNS" -d"$DURATION" --timeout 5s -s "$BENCH_DIR/$2" "$URL" 2>&1 | grep -E '^(RESULT|CREATED)')
    t1=$(api_ticks)
    echo "$out"
    awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '/^RESULT/ { split($3, kv, "=");
        printf "    API CPU: %.0f us per request (%.2f cores)\n", 1e6 * t / hz / kv[2], t / hz / '"${DURATION%s}"' }' <<<"$out"
}

if phase cache; then
say "feed from the cache: wrk -t2 -c$CONNS -d$DURATION, 1,000 users, limit=50"
c0=$(metric 'feedrank_feed_responses_total{source="cache"}')
w0=$(metric feedrank_served_log_written_total); d0=$(metric 'feedrank_served_log_dropped_total{reason="queue_full"}')
run_wrk feed_cache feed.lua "$WORK/rec_tokens" | tee "$WORK/r1"
c1=$(metric 'feedrank_feed_responses_total{source="cache"}')
echo "    answered from the cache: $((c1 - c0))"
sleep 2 # the served log's last batch
w1=$(metric feedrank_served_log_written_total); d1=$(metric 'feedrank_served_log_dropped_total{reason="queue_full"}')
if [[ ${FEEDRANK_SERVED_LOG:-1} == 0 ]]; then
    echo "    served log: off (FEEDRANK_SERVED_LOG=0)"
else
    echo "    served log: $((w1 - w0)) posts written, $((d1 - d0)) dropped (queue full)"
fi
fi

if phase fallback; then
say "random fallback over $(psql "$DB" -tAc "SELECT count(*) FROM posts") posts: wrk -t2 -c$CONNS -d$DURATION, 1,000 users without recommendations"
f0=$(metric 'feedrank_feed_responses_total{source="fallback"}')
run_wrk feed_fallback feed.lua "$WORK/fallback_tokens" | tee "$WORK/r2"
f1=$(metric 'feedrank_feed_responses_total{source="fallback"}')
echo "    answered by the fallback: $((f1 - f0))"
fi

if phase track; then
say "tracking: wrk -t2 -c$CONNS -d$DURATION, POST /api/track with unique event ids"
before=$(psql "$DB" -tAc "SELECT count(*) FROM user_interactions")
s0=$(metric feedrank_events_stored_total)
BENCH_RUN=$$ run_wrk track track.lua "$WORK/rec_tokens" | tee "$WORK/r3"
sleep 1 # requests still in flight when wrk stopped finish (and are stored) on the server
after=$(psql "$DB" -tAc "SELECT count(*) FROM user_interactions")
s1=$(metric feedrank_events_stored_total)
created=$(awk '/^CREATED/ { print $2 }' "$WORK/r3")
rows=$((after - before)); accepted=$((s1 - s0))
echo "    events accepted by the API (201 sent): $accepted, new rows: $rows, 201 answers read by wrk: $created"
echo "    (wrk stops with up to $CONNS requests in flight: their rows exist, their answers were not read)"
if (( accepted != rows || created > rows || rows - created > CONNS )); then
    echo "bench-api: MISMATCH between accepted events and stored rows"; exit 1
fi
fi

if phase sources; then
say "every source on: wrk -t2 -c$CONNS -d$DURATION, 1,000 users whose run has a serving model (model $model), limit=50"
# The users' first pages with every source on load what a returning user has warm (its neighbour
# lists, its fresh ranking): 1,000 users at once is a cold start, measured apart (BENCH_COLD, 5s).
DURATION=${BENCH_COLD:-5s} run_wrk feed_sources_cold feed.lua "$WORK/source_tokens" | tee "$WORK/r4a"
served() { local v; v=$(metric "feedrank_feed_posts_served_total{source=\"$1\"}"); echo "${v:-0}"; }
names=(personalized fresh because_you_liked trending fallback)
declare -A p0
for n in "${names[@]}"; do p0[$n]=$(served "$n"); done
# Meanwhile new posts are published (BENCH_PUBLISH_RATE a second, default 10, committed every
# 0.1 s; 167 is the issue's flood of 10,000 a minute): the delay from a post's creation to its
# entry into the fresh pool is read off the API's histogram.
delays() { curl -sf "$URL/metrics" | grep '^feedrank_fresh_eligibility_delay_seconds_bucket'; }
delays >"$WORK/delay0"
secs=${DURATION%s}
per_tick=$(( (PUBLISH_RATE + 9) / 10 ))
say "publishing $((per_tick * 10)) posts a second meanwhile"
psql "$DB" -q -c "DO \$\$ BEGIN FOR i IN 1..$((secs * 10)) LOOP
    INSERT INTO posts (user_id, content, created_at)
    SELECT user_id, 'bench-fresh ' || content, clock_timestamp() FROM posts TABLESAMPLE SYSTEM (0.1) LIMIT $per_tick;
    COMMIT; PERFORM pg_sleep(0.1); END LOOP; END \$\$" &
publisher=$!
run_wrk feed_sources feed.lua "$WORK/source_tokens" | tee "$WORK/r4"
wait "$publisher"
sleep 2 # the last posts' reload
delays >"$WORK/delay1"
python3 - "$WORK/delay0" "$WORK/delay1" <<'PY'
import re, sys
def read(path):
    return {m.group(1): float(m.group(2)) for m in
            (re.search(r'le="([^"]+)"\} (\S+)', line) for line in open(path)) if m}
before, after = read(sys.argv[1]), read(sys.argv[2])
new = {le: after[le] - before.get(le, 0.0) for le in after}
total = new.get("+Inf", 0.0)
if total == 0:
    print("    new posts entering the fresh pool: none measured"); sys.exit()
p95 = next(le for le in sorted(new, key=lambda x: float(x)) if new[le] >= 0.95 * total)
print(f"    new posts entering the fresh pool: {int(total)}, creation to eligibility p95 <= {p95} s")
PY
line="    posts served by source:"
for n in "${names[@]}"; do line+=" $n $(( $(served "$n") - ${p0[$n]} ))"; done
echo "$line"
sample=$(curl -sf -H "Authorization: Bearer $(head -1 "$WORK/source_tokens")" "$URL/api/feeds?limit=50")
python3 -c 'import json,sys; m=json.loads(sys.argv[1])["metadata"]; print("    sample page: sources=%s skipped=%s" % (m["sources"], m.get("skipped", [])))' "$sample"
fi

say "summary"
printf '| %-14s | %9s | %8s | %8s | %8s |\n' scenario "req/s" "p50 ms" "p95 ms" "p99 ms"
printf '|%s|\n' "----------------|-----------|----------|----------|----------"
cat "$WORK"/r[1-4]* | awk '/^RESULT/ {
    for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "| %-14s | %9s | %8s | %8s | %8s |\n", $2, v["rps"], v["p50"], v["p95"], v["p99"] }'
