"""A scikit-learn-compatible ``TfidfVectorizer`` backed by the Rust kernel.

With default settings ``fit_transform`` equals ``sklearn.feature_extraction.text.TfidfVectorizer()``
(token pattern ``(?u)\\b\\w\\w+\\b``, lowercase, smooth idf, l2 norm) within 1e-6, also on non-ASCII
text; it runs in parallel and releases the GIL.

>>> from feedrank import TfidfVectorizer
>>> v = TfidfVectorizer()
>>> X = v.fit_transform(["the cat sat", "the dog", "Café au lait"])
>>> X.shape
(3, 7)
>>> v.vocabulary_["café"]
1
>>> TfidfVectorizer.from_json(v.to_json()).transform(["a cat"]).nnz
1
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from feedrank._core import TfidfModel, tfidf_fit_transform


class TfidfVectorizer:
    """Convert texts to a matrix of TF-IDF features (the subset of scikit-learn's options that
    the feed needs).

    Parameters follow scikit-learn: ``min_df``/``max_df`` are document counts when ints and
    proportions of the documents when floats; ``max_features`` keeps the most frequent terms;
    ``norm`` is ``"l2"``, ``"l1"`` or ``None``.

    >>> from feedrank import TfidfVectorizer
    >>> v = TfidfVectorizer(min_df=2)
    >>> v.fit_transform(["red apples", "green apples", "red cars"]).shape
    (3, 2)
    >>> list(v.get_feature_names_out())
    ['apples', 'red']
    """

    def __init__(
        self,
        min_df: int | float = 1,
        max_df: int | float = 1.0,
        max_features: int | None = None,
        lowercase: bool = True,
        norm: str | None = "l2",
        smooth_idf: bool = True,
        sublinear_tf: bool = False,
    ) -> None:
        self.min_df = min_df
        self.max_df = max_df
        self.max_features = max_features
        self.lowercase = lowercase
        self.norm = norm
        self.smooth_idf = smooth_idf
        self.sublinear_tf = sublinear_tf
        self._model: TfidfModel | None = None

    def __repr__(self) -> str:
        return (
            f"TfidfVectorizer(min_df={self.min_df!r}, max_df={self.max_df!r}, "
            f"max_features={self.max_features!r}, lowercase={self.lowercase!r}, "
            f"norm={self.norm!r}, smooth_idf={self.smooth_idf!r}, "
            f"sublinear_tf={self.sublinear_tf!r})"
        )

    def fit_transform(self, docs: Iterable[str], y: Any = None) -> Any:
        """Learn vocabulary and idf from ``docs``; return their TF-IDF matrix (CSR, float64)."""
        self._model, x = tfidf_fit_transform(
            docs,
            self.min_df,
            self.max_df,
            self.max_features,
            bool(self.lowercase),
            self.norm,
            bool(self.smooth_idf),
            bool(self.sublinear_tf),
        )
        return x

    def fit(self, docs: Iterable[str], y: Any = None) -> "TfidfVectorizer":
        """Learn vocabulary and idf from ``docs``."""
        self.fit_transform(docs)
        return self

    def transform(self, docs: Iterable[str]) -> Any:
        """TF-IDF matrix of ``docs`` under the fitted vocabulary (unknown terms are ignored)."""
        return self._fitted().transform(docs)

    def _fitted(self) -> TfidfModel:
        if self._model is None:
            raise ValueError("TfidfVectorizer: not fitted; call fit or fit_transform first")
        return self._model

    @property
    def vocabulary_(self) -> dict[str, int]:
        """A mapping of terms to feature indices."""
        return self._fitted().vocabulary()

    @property
    def idf_(self) -> np.ndarray:
        """The inverse document frequency of each feature (float64)."""
        return self._fitted().idf()

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The terms, by column (an object array, as scikit-learn returns)."""
        return np.asarray(self._fitted().feature_names(), dtype=object)

    def to_json(self) -> str:
        """The fitted state (settings, vocabulary, idf) as JSON, for :meth:`from_json`."""
        return self._fitted().to_json()

    @classmethod
    def from_json(cls, s: str) -> "TfidfVectorizer":
        """A fitted vectorizer from :meth:`to_json`'s output."""
        model = TfidfModel.from_json(s)
        p = json.loads(model.params_json())

        def df(v: dict[str, Any]) -> int | float:
            return v["count"] if "count" in v else v["proportion"]

        v = cls(
            min_df=df(p["min_df"]),
            max_df=df(p["max_df"]),
            max_features=p["max_features"],
            lowercase=p["lowercase"],
            norm=p["norm"],
            smooth_idf=p["smooth_idf"],
            sublinear_tf=p["sublinear_tf"],
        )
        v._model = model
        return v
