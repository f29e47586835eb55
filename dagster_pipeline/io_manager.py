"""An IO manager that stores the pipeline's intermediate data as columnar files, not pickles.

Every asset of the pipeline returns a *bundle*: a flat ``dict`` whose values are numpy arrays,
``scipy.sparse.csr_matrix`` matrices, polars DataFrames or JSON-able values. A bundle is stored as
a directory (``<base_dir>/<asset key>/<partition>/``) with one file per value:

- numpy arrays as ``.npy`` (read back memory-mapped, so a step that needs a slice of a large array
  does not read all of it),
- CSR matrices as three ``.npy`` files plus their shape,
- DataFrames as Arrow IPC (``.arrow``),
- everything else in one ``values.json``.

It works across processes (the multiprocess executor gives each step its own process) because it
only needs a shared directory, by default the instance's storage directory under DAGSTER_HOME.

A step that materializes several partitions at once (a run over a range of user shards) returns
a dict ``{partition_key: bundle}``; each partition is stored in its own directory, so a later run
of a single shard finds its input, and loading several partitions gives back such a dict.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import scipy.sparse as sp

_UNPARTITIONED = "__all__"
_VALUES = "values.json"


def _safe(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or ".csr." in name:
        raise ValueError(f"bundle key: {name!r} is not usable as a file name")
    return name


def write_bundle(path: Path, bundle: dict[str, Any]) -> int:
    """Writes ``bundle`` to the directory ``path`` atomically; returns the bytes written."""
    if not isinstance(bundle, dict):
        raise TypeError(f"bundle: expected a dict of arrays/frames/values, got {type(bundle).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    values: dict[str, Any] = {}
    try:
        for key, value in bundle.items():
            name = _safe(key)
            if isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise TypeError(f"bundle[{key!r}]: object arrays are not stored; use a DataFrame")
                np.save(tmp / f"{name}.npy", value, allow_pickle=False)
            elif sp.issparse(value):
                m = sp.csr_matrix(value)
                np.save(tmp / f"{name}.csr.indptr.npy", m.indptr, allow_pickle=False)
                np.save(tmp / f"{name}.csr.indices.npy", m.indices, allow_pickle=False)
                np.save(tmp / f"{name}.csr.data.npy", m.data, allow_pickle=False)
                values[f"{name}.csr.shape"] = list(m.shape)
            elif isinstance(value, pl.DataFrame):
                value.write_ipc(tmp / f"{name}.arrow", compression="uncompressed")
            else:
                values[name] = value
        with open(tmp / _VALUES, "w") as f:
            json.dump(values, f)
        size = sum(p.stat().st_size for p in tmp.iterdir())
        if path.exists():
            old = path.parent / f".{path.name}.{uuid.uuid4().hex}.old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        return size
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_bundle(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no stored output here; materialize the upstream asset (or partition) first"
        )
    with open(path / _VALUES) as f:
        values = json.load(f)
    bundle: dict[str, Any] = {}
    shapes = {k[: -len(".csr.shape")]: v for k, v in values.items() if k.endswith(".csr.shape")}
    for key, value in values.items():
        if not key.endswith(".csr.shape"):
            bundle[key] = value
    for name, shape in shapes.items():
        bundle[name] = sp.csr_matrix(
            (
                np.load(path / f"{name}.csr.data.npy", mmap_mode="r"),
                np.load(path / f"{name}.csr.indices.npy", mmap_mode="r"),
                np.load(path / f"{name}.csr.indptr.npy", mmap_mode="r"),
            ),
            shape=tuple(shape),
            copy=False,
        )
    for file in path.iterdir():
        if ".csr." in file.name:
            continue
        if file.suffix == ".npy":
            bundle[file.name[:-4]] = np.load(file, mmap_mode="r")
        elif file.suffix == ".arrow":
            bundle[file.name[:-6]] = pl.read_ipc(file)
    return bundle


class BundleIOManager(dg.ConfigurableIOManager):
    """Stores bundles (dicts of arrays, CSR matrices, DataFrames, JSON values) as files."""

    base_dir: str | None = None
    """Directory for the stored outputs; default: ``<instance storage directory>/feedrank``."""

    def _root(self, context: dg.InputContext | dg.OutputContext) -> Path:
        if self.base_dir:
            return Path(self.base_dir)
        return Path(context.step_context.instance.storage_directory()) / "feedrank"

    def _asset_dir(self, context: dg.InputContext | dg.OutputContext) -> Path:
        return self._root(context).joinpath(*context.asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        base = self._asset_dir(context)
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if len(keys) == 1 and not (isinstance(obj, dict) and set(obj) == set(keys)):
                parts = {keys[0]: obj}
            else:
                if not isinstance(obj, dict) or set(obj) != set(keys):
                    raise TypeError(
                        f"{context.asset_key.to_user_string()}: a step over partitions {keys} must "
                        "return a dict keyed by exactly those partition keys"
                    )
                parts = obj
        else:
            parts = {_UNPARTITIONED: obj}
        total = 0
        for key, bundle in parts.items():
            total += write_bundle(base / key, bundle)
        context.add_output_metadata({"stored_bytes": dg.MetadataValue.int(total), "path": str(base)})

    def load_input(self, context: dg.InputContext) -> Any:
        base = self._asset_dir(context)
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if len(keys) == 1:
                return read_bundle(base / keys[0])
            return {key: read_bundle(base / key) for key in keys}
        return read_bundle(base / _UNPARTITIONED)
