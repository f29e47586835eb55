"""Type stubs of the native module ``feedrank._core`` (Rust, pyo3). Import from ``feedrank``."""

from typing import Any, Mapping, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

# A CSR matrix: scipy.sparse (any format; converted to CSR), an object with
# indptr/indices/data/shape, or the tuple (indptr, indices, data, shape).
CsrLike = Any
# The hybrid weights: (collaborative, content, recency, engagement) or a dict of those four.
Weights = Union[Sequence[float], Mapping[str, float]]
IntArray = npt.ArrayLike
FloatArray = npt.ArrayLike

# --- shared contracts (rust/core config.rs, cache.rs) ---
def default_config() -> dict[str, Any]: ...
def validate_config(cfg: dict[str, Any]) -> dict[str, Any]: ...
def reasons(components: FloatArray, weights: Weights) -> list[str]: ...
def recommendations_key(prefix: str, user_id: str) -> str: ...
def encode_cache_entry(
    run_id: int,
    generated_at: int,
    post_ids: Sequence[str],
    scores: FloatArray,
    components: FloatArray,
    weights: Weights,
) -> bytes: ...
def decode_cache_entry(data: bytes) -> dict[str, Any]: ...
def component_names() -> tuple[str, str, str, str]: ...

# --- shuffle ---
def shuffle(ids: np.ndarray, seed: int) -> np.ndarray: ...
def permutation(n: int, seed: int) -> npt.NDArray[np.int64]: ...

# --- TF-IDF (use feedrank.TfidfVectorizer) ---
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
    norm: str | None = "l2",
    smooth_idf: bool = True,
    sublinear_tf: bool = False,
) -> tuple[TfidfModel, Any]: ...
def tokenize(text: str, lowercase: bool = True) -> list[str]: ...

# --- similarity, recommending ---
def weight_interactions(interactions: CsrLike, weighting: str = "none", k1: float = 100.0, b: float = 0.8) -> Any: ...
def cosine_topk(
    queries: CsrLike, items: CsrLike | None = None, k: int = 50, exclude_self: bool = True
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def item_neighbors(
    interactions: CsrLike,
    k: int = 50,
    weighting: str = "none",
    k1: float = 100.0,
    b: float = 0.8,
    exclude_self: bool = True,
) -> Any: ...
def recommend_items(
    interactions: CsrLike,
    item_neighbors: CsrLike,
    users: IntArray,
    k: int = 50,
    exclude_interacted: bool = True,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def hybrid_topk(
    interactions: CsrLike,
    post_tfidf: CsrLike,
    post_age_days: FloatArray,
    post_engagement: FloatArray,
    post_author: IntArray,
    users: IntArray,
    k: int = 200,
    weights: Weights | None = None,
    neighbors: int = 50,
    recency_tau_days: float = 30.0,
    collaborative: str = "user_user",
    weighting: str = "none",
    exclude: CsrLike | None = None,
    candidates: IntArray | None = None,
    bm25_k1: float = 100.0,
    bm25_b: float = 0.8,
    item_neighbors: CsrLike | None = None,
    **model_params: float,
) -> dict[str, np.ndarray]: ...

class HybridModel:
    """``hybrid_topk`` prepared once (all arguments but ``users``); ``topk`` scores any batch."""

    def __init__(
        self,
        interactions: CsrLike,
        post_tfidf: CsrLike,
        post_age_days: FloatArray,
        post_engagement: FloatArray,
        post_author: IntArray,
        k: int = 200,
        weights: Weights | None = None,
        neighbors: int = 50,
        recency_tau_days: float = 30.0,
        collaborative: str = "user_user",
        weighting: str = "none",
        exclude: CsrLike | None = None,
        candidates: IntArray | None = None,
        bm25_k1: float = 100.0,
        bm25_b: float = 0.8,
        item_neighbors: CsrLike | None = None,
        **model_params: float,
    ) -> None: ...
    def topk(self, users: IntArray) -> dict[str, np.ndarray]: ...
    @property
    def n_users(self) -> int: ...

# --- metrics (shared/EVAL.md) ---
def ranking_metrics(topk: IntArray, test: CsrLike, k: int = 10, n_items: int | None = None) -> dict[str, float]: ...
def metrics_at_k(topk: IntArray, test: CsrLike, ks: Sequence[int], n_items: int | None = None) -> dict[str, Any]: ...
def ridge_item_neighbors(interactions: CsrLike, neighbors: int = 100, l2: float = 50.0) -> Any: ...
