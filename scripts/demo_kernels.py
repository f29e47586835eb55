"""The kernels end to end on a small synthetic feed (`make demo-kernels`): TF-IDF of post texts,
then the hybrid top-10 of a few users, printed as a table with each recommendation's components
and reason.

    python scripts/demo_kernels.py [--users N] [--posts N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import scipy.sparse as sp

import feedrank

TOPICS = {
    "football": "match goal league striker keeper derby transfer season coach stadium",
    "cooking": "recipe oven garlic pasta sauce bake dough spice kitchen dinner",
    "astronomy": "telescope galaxy orbit comet nebula planet eclipse star moon launch",
    "jazz": "saxophone trumpet swing improvisation quartet club record bass drummer blues",
    "gardening": "tomato compost seedling prune soil bloom greenhouse harvest weeds rose",
}
INTERACTION_WEIGHTS = feedrank.default_config()["interaction_weights"]


def synthetic_feed(n_users: int, n_posts: int, seed: int):
    """Users who each like one or two topics, posts about one topic, interactions by taste."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    post_topic = rng.integers(len(topics), size=n_posts)
    texts = []
    for t in post_topic:
        words = TOPICS[topics[t]].split()
        other = TOPICS[topics[rng.integers(len(topics))]].split()
        body = list(rng.choice(words, 6)) + list(rng.choice(other, 2))
        texts.append(f"{topics[t].title()}: " + " ".join(body))
    taste = np.zeros((n_users, len(topics)))
    for u in range(n_users):
        taste[u, rng.choice(len(topics), rng.integers(1, 3), replace=False)] = 1.0
    kinds = [t for t in feedrank.interaction_types() if t != "hide"]
    rows, cols, vals = [], [], []
    for u in range(n_users):
        p = 0.02 + 0.25 * taste[u, post_topic]
        seen = np.flatnonzero(rng.random(n_posts) < p * 0.3)
        for post in seen:
            kind = kinds[min(len(kinds) - 1, rng.geometric(0.55) - 1)]
            rows.append(u)
            cols.append(post)
            vals.append(INTERACTION_WEIGHTS[kind])
    x = sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n_users, n_posts))
    age_days = rng.exponential(12.0, n_posts)
    engagement = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
    author = np.where(rng.random(n_posts) < 0.3, rng.integers(n_users, size=n_posts), -1)
    return texts, topics, post_topic, taste, x, age_days, engagement, author


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo_kernels.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--posts", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--show", type=int, default=3, help="users to print")
    args = p.parse_args(argv)

    texts, topics, post_topic, taste, x, age, engagement, author = synthetic_feed(args.users, args.posts, args.seed)
    print(f"feedrank {feedrank.__version__}: {args.users} users, {args.posts} posts, "
          f"{x.nnz} interactions (weights {INTERACTION_WEIGHTS})")

    t = time.perf_counter()
    vec = feedrank.TfidfVectorizer()
    tfidf = vec.fit_transform(texts)
    print(f"TF-IDF: {tfidf.shape[0]} posts x {tfidf.shape[1]} terms in {1000 * (time.perf_counter() - t):.1f} ms")

    cfg = feedrank.default_config()
    users = np.arange(min(args.show, args.users))
    t = time.perf_counter()
    res = feedrank.hybrid_topk(x, tfidf, age, engagement, author, users, {**cfg, "top_k": 10})
    print(f"hybrid top-10 for {len(users)} users in {1000 * (time.perf_counter() - t):.1f} ms "
          f"(weights {cfg['weights']})\n")
    for r, u in enumerate(users):
        liked = ", ".join(topics[i] for i in np.flatnonzero(taste[u]))
        print(f"user {u}: likes {liked}; {x[u].nnz} interactions")
        print(f"  {'rank':>4} {'post':>5}  {'topic':<10} {'score':>6} {'collab':>7} {'content':>8} "
              f"{'recency':>8} {'engage':>7}  reason          text")
        comps = res["components"][r]
        reasons = feedrank.reasons(comps, cfg["weights"])
        for rank, (post, score) in enumerate(zip(res["indices"][r], res["scores"][r]), 1):
            if post < 0:
                break
            c = comps[rank - 1]
            print(f"  {rank:>4} {post:>5}  {topics[post_topic[post]]:<10} {score:>6.3f} {c[0]:>7.3f} "
                  f"{c[1]:>8.3f} {c[2]:>8.3f} {c[3]:>7.3f}  {reasons[rank - 1]:<15} {texts[post][:38]}")
        hits = np.mean([taste[u, post_topic[p]] > 0 for p in res["indices"][r] if p >= 0])
        print(f"  -> {100 * hits:.0f}% of the top-10 are in the user's topics\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
