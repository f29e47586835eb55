"""The examples in feedrank's docstrings run and print what they say (doctest), including the
docstrings of the native functions, which come from the Rust doc comments."""

import doctest

import numpy as np
import scipy.sparse as sp

import feedrank
import feedrank._core
import feedrank.tfidf


def run(obj, name):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(obj.__doc__ or "", {"np": np, "sp": sp, "feedrank": feedrank}, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    return len(test.examples), runner.failures


# Everything the package exports and everything the native module exports.
KERNEL_API = sorted((set(feedrank.__all__) | set(feedrank._core.__all__)) - {"__version__"})


def test_every_kernel_api_function_has_a_passing_example():
    without = []
    for name in KERNEL_API:
        n, failures = run(getattr(feedrank, name), name)
        assert failures == 0, f"{name}: doctest failed"
        if n == 0:
            without.append(name)
    assert without == [], f"no example in the docstring of {without}"


def test_module_docstrings():
    for mod in (feedrank, feedrank.tfidf):
        n, failures = run(mod, mod.__name__)
        assert n > 0 and failures == 0


def test_stubs_cover_the_native_module():
    """python/feedrank/_core.pyi declares exactly what feedrank._core exports."""
    import ast
    from pathlib import Path

    import feedrank._core as core

    tree = ast.parse((Path(feedrank.__file__).parent / "_core.pyi").read_text())
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    stubbed |= {t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target]}
    exported = {n for n in dir(core) if not n.startswith("_")} | {"__version__"}
    assert exported - stubbed == set(), "exported but not in _core.pyi"
    missing = {n for n in stubbed if not hasattr(core, n)}
    assert missing == set(), f"in _core.pyi but not exported: {missing}"
