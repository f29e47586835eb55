"""feedrank: personalized feed ranking kernels (Rust) for Python."""

from feedrank._core import __version__

__all__ = ["__version__"]
