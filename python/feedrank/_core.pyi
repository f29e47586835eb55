"""Type stubs of the native module ``feedrank._core`` (Rust, pyo3). Import from ``feedrank``.

``make stubtest`` checks them against the built module (``mypy.stubtest``): every name, every
parameter and default as the module declares them.
"""

from typing import Any, Mapping, Sequence, Union, final

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "AUTHOR_CAP",
    "HybridModel",
    "TfidfModel",
    "__version__",
    "assign_arm",
    "blend",
    "collaborative_models",
    "component_names",
    "cosine_topk",
    "decode_cache_entry",
    "default_config",
    "diversify",
    "encode_cache_entry",
    "experiment_arms",
    "fresh_topk",
    "history_weights",
    "hybrid_topk",
    "interaction_types",
    "item_neighbors",
    "metrics_at_k",
    "permutation",
    "ranking_metrics",
    "reason_names",
    "reasons",
    "recommend_items",
    "recommendations_key",
    "ridge_item_neighbors",
    "shuffle",
    "source_names",
    "tfidf_fit_transform",
    "tokenize",
    "user_profiles",
    "validate_config",
    "validate_experiment",
    "weight_interactions",
    "weighting_names",
]

# A CSR matrix: scipy.sparse (any format; converted to CSR), an object with
# indptr/indices/data/shape, or the tuple (indptr, indices, data, shape).
_CsrLike = Any
# The hybrid weights: (collaborative, content, recency, engagement) or a dict of those four.
_Weights = Union[Sequence[float], Mapping[str, float]]
# A (partial) ScoringConfig: the dict default_config()/validate_config() return, or some of its
# fields (rust/core/src/config.rs documents each).
_Config = Mapping[str, Any]
_IntArray = npt.ArrayLike
_FloatArray = npt.ArrayLike

# --- shared contracts (rust/core config.rs, cache.rs) ---
def default_config() -> dict[str, Any]: ...
def validate_config(cfg: dict[str, Any]) -> dict[str, Any]: ...
def validate_experiment(experiment: dict[str, Any]) -> dict[str, Any]: ...
def assign_arm(salt: str, user_id: str, shares: Sequence[float]) -> int: ...
def experiment_arms(
    experiments: Sequence[dict[str, Any]], user_ids: Sequence[str]
) -> dict[str, npt.NDArray[np.int32]]: ...
def reasons(components: _FloatArray, weights: _Weights) -> list[str]: ...
def recommendations_key(prefix: str, user_id: str) -> str: ...
def encode_cache_entry(
    run_id: int,
    generated_at: int,
    post_ids: Sequence[str],
    scores: _FloatArray,
    components: _FloatArray,
    weights: _Weights,
    model_id: int | None = None,
    profile: Mapping[str, Any] | None = None,
) -> bytes: ...
def decode_cache_entry(data: bytes) -> dict[str, Any]: ...
def component_names() -> tuple[str, ...]: ...
def interaction_types() -> tuple[str, ...]: ...
def collaborative_models() -> tuple[str, ...]: ...
def weighting_names() -> tuple[str, ...]: ...
def source_names() -> tuple[str, ...]: ...
def reason_names() -> tuple[str, ...]: ...

# --- shuffle ---
def shuffle(ids: np.ndarray, seed: int) -> np.ndarray: ...
def permutation(n: int, seed: int) -> npt.NDArray[np.int64]: ...

# --- TF-IDF (use feedrank.TfidfVectorizer) ---
@final
class TfidfModel:
    def transform(self, docs: Sequence[str]) -> Any: ...
    def vocabulary(self) -> dict[str, int]: ...
    def feature_names(self) -> list[str]: ...
    def idf(self) -> npt.NDArray[np.float64]: ...
    def n_features(self) -> int: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(s: str) -> "TfidfModel": ...
    def params_json(self) -> str: ...

def tfidf_fit_transform(
    docs: Sequence[str],
    min_df: int | float,
    max_df: int | float,
    max_features: int | None = None,
    lowercase: bool = True,
    norm: str | None = ...,  # "l2"
    smooth_idf: bool = True,
    sublinear_tf: bool = False,
) -> tuple[TfidfModel, Any]: ...
def tokenize(text: str, lowercase: bool = True) -> list[str]: ...

# --- similarity, recommending ---
def weight_interactions(interactions: _CsrLike, weighting: str = "none", k1: float = 100.0, b: float = 0.8) -> Any: ...
def history_weights(
    users: _IntArray, timestamps: npt.ArrayLike, raw_items: npt.ArrayLike, half_life: float
) -> npt.NDArray[np.float32]: ...
def cosine_topk(
    queries: _CsrLike, items: _CsrLike | None = None, k: int = 50, exclude_self: bool = True
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def item_neighbors(
    interactions: _CsrLike,
    k: int = 50,
    weighting: str = "none",
    k1: float = 100.0,
    b: float = 0.8,
    exclude_self: bool = True,
) -> Any: ...
def recommend_items(
    interactions: _CsrLike,
    item_neighbors: _CsrLike,
    users: _IntArray,
    k: int = 50,
    exclude_interacted: bool = True,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def hybrid_topk(
    interactions: _CsrLike,
    post_tfidf: _CsrLike,
    post_age_days: _FloatArray,
    post_engagement: _FloatArray,
    post_author: _IntArray,
    users: _IntArray,
    config: _Config | None = None,
    *,
    exclude: _CsrLike | None = None,
    candidates: _IntArray | None = None,
    item_neighbors: _CsrLike | None = None,
    **deprecated: Any,
) -> dict[str, np.ndarray]: ...

@final
class HybridModel:
    """``hybrid_topk`` prepared once (all arguments but ``users``); ``topk`` scores any batch."""

    def __new__(
        cls,
        interactions: _CsrLike,
        post_tfidf: _CsrLike,
        post_age_days: _FloatArray,
        post_engagement: _FloatArray,
        post_author: _IntArray,
        config: _Config | None = None,
        *,
        exclude: _CsrLike | None = None,
        candidates: _IntArray | None = None,
        item_neighbors: _CsrLike | None = None,
        **deprecated: Any,
    ) -> HybridModel: ...
    def topk(self, users: _IntArray) -> dict[str, np.ndarray]: ...
    @property
    def n_users(self) -> int: ...

# --- the feed's request-time sources (rust/core profile.rs, fresh.rs, blend.rs) ---
def user_profiles(
    interactions: _CsrLike,
    post_tfidf: _CsrLike,
    post_author: _IntArray,
    users: _IntArray,
    config: _Config | None = None,
) -> dict[str, Any]: ...
def fresh_topk(
    post_tfidf: _CsrLike,
    post_created_ms: _IntArray,
    post_author: _IntArray,
    post_engagement: _FloatArray,
    now_ms: int,
    profiles: _CsrLike,
    author_affinity: _CsrLike,
    after_ms: _IntArray,
    before_ms: int,
    config: _Config | None = None,
    *,
    exclude: _CsrLike | None = None,
    n: int | None = None,
) -> dict[str, Any]: ...
def blend(
    lists: Sequence[_IntArray], shares: _FloatArray, max_len: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...

AUTHOR_CAP: int
# cap: AUTHOR_CAP by default
def diversify(authors: _IntArray, window: int, cap: int = ..., max_out: int | None = None) -> npt.NDArray[np.int64]: ...

# --- metrics (shared/EVAL.md) ---
def ranking_metrics(topk: _IntArray, test: _CsrLike, k: int = 10, n_items: int | None = None) -> dict[str, float]: ...
def metrics_at_k(topk: _IntArray, test: _CsrLike, ks: Sequence[int], n_items: int | None = None) -> dict[str, Any]: ...
def ridge_item_neighbors(interactions: _CsrLike, neighbors: int = 100, l2: float = 50.0) -> Any: ...
