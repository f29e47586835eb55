"""feedrank: personalized feed ranking kernels (Rust) for Python.

Every function releases the GIL while it computes and validates its arguments: a wrong dtype or
type raises ``TypeError``, a bad value ``ValueError``, and the message starts with the argument's
name (``"k: must be >= 1, got 0"``).

>>> import numpy as np, feedrank
>>> feedrank.permutation(5, seed=42).tolist() == feedrank.shuffle(np.arange(5), seed=42).tolist()
True
"""

from feedrank._core import (
    __version__,
    component_names,
    cosine_topk,
    decode_cache_entry,
    default_config,
    encode_cache_entry,
    HybridModel,
    hybrid_topk,
    item_neighbors,
    metrics_at_k,
    permutation,
    ranking_metrics,
    reasons,
    recommend_items,
    recommendations_key,
    ridge_item_neighbors,
    shuffle,
    tokenize,
    validate_config,
    weight_interactions,
)
from feedrank.tfidf import TfidfVectorizer

__all__ = [
    "__version__",
    "component_names",
    "cosine_topk",
    "decode_cache_entry",
    "default_config",
    "encode_cache_entry",
    "HybridModel",
    "hybrid_topk",
    "item_neighbors",
    "metrics_at_k",
    "permutation",
    "ranking_metrics",
    "reasons",
    "recommend_items",
    "recommendations_key",
    "ridge_item_neighbors",
    "shuffle",
    "tokenize",
    "TfidfVectorizer",
    "validate_config",
    "weight_interactions",
]
