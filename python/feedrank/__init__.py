"""feedrank: personalized feed ranking kernels (Rust) for Python.

Every function releases the GIL while it computes and validates its arguments: a wrong dtype or
type raises ``TypeError``, a bad value ``ValueError``, and the message starts with the argument's
name (``"k: must be >= 1, got 0"``).

>>> import numpy as np, feedrank
>>> feedrank.permutation(5, seed=42).tolist() == feedrank.shuffle(np.arange(5), seed=42).tolist()
True
"""

from feedrank import _core
from feedrank._core import *  # noqa: F403 (the names of _core.pyi's __all__, checked by stubtest)
from feedrank.tfidf import TfidfVectorizer

# The native module's names, but the TF-IDF internals that TfidfVectorizer wraps.
__all__ = sorted(set(_core.__all__) - {"TfidfModel", "tfidf_fit_transform"} | {"TfidfVectorizer"})
