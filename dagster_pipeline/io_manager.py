"""An IO manager that stores the pipeline's intermediate data as columnar files, not pickles, on a
local disk or on object storage (anything fsspec reaches through ``UPath``: ``s3://``, ``gs://``).

Every asset of the pipeline returns a *bundle*: a flat ``dict`` whose values are numpy arrays,
``scipy.sparse.csr_matrix`` matrices, polars DataFrames or JSON-able values. A bundle is stored
under ``<base>/<asset key>/<partition>/`` with one file per value:

- numpy arrays as ``.npy`` (read back memory-mapped from a local disk, so a step that needs a slice
  of a large array does not read all of it),
- CSR matrices as three ``.npy`` files plus their shape,
- DataFrames as Arrow IPC (``.arrow``),
- everything else in one ``values.json``.

Object stores have no rename, so a bundle is replaced atomically by a manifest: the files go under
a new version prefix (``<partition>/version-<hex>/``), then ``<partition>/manifest.json`` (one
object, written in one PUT, or renamed into place on a local disk) names that version and its
files. A reader reads the manifest first and then only the files it names: it sees the old bundle
or the new one, never a mix. The version before the current one is kept (a reader that read the
old manifest a moment ago still finds its files); older ones are deleted by the next write.

The base is ``BundleIOManager.base_dir``, else the ``FEEDRANK_STORAGE_URL`` environment variable
when a run starts, else ``<instance storage directory>/feedrank`` (under DAGSTER_HOME): a
directory for one machine, ``s3://bucket/prefix`` for workers on several hosts. S3 credentials and
endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL_S3`` for an S3-compatible server), or ``storage_options``.

A step that materializes several partitions at once (a run over a range of user shards) returns
a dict ``{partition_key: bundle}``; each partition is stored on its own, so a later run of a single
shard finds its input, and loading several partitions gives back such a dict.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import dagster as dg
import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field
from upath import UPath

_UNPARTITIONED = "__all__"
_VALUES = "values.json"
MANIFEST = "manifest.json"
_VERSION_PREFIX = "version-"
STORAGE_URL_ENV = "FEEDRANK_STORAGE_URL"

StoragePath = pathlib.Path | UPath
# A file of a bundle: its name and the function that writes its bytes to a binary file.
_File = tuple[str, Callable[[BinaryIO], None]]


def storage_path(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> StoragePath:
    """A local directory or an fsspec URL (``s3://bucket/prefix``) as a path object."""
    return UPath(url, **(storage_options or {}))


def _is_local(path: StoragePath) -> bool:
    # UPath of a local directory is a pathlib.Path; object-store paths are not
    return isinstance(path, pathlib.Path)


def _safe(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or ".csr." in name:
        raise ValueError(f"bundle key: {name!r} is not usable as a file name")
    return name


def _npy(value: np.ndarray) -> Callable[[BinaryIO], None]:
    return lambda f: np.save(f, value, allow_pickle=False)


def _bundle_files(bundle: dict[str, Any]) -> tuple[list[_File], dict[str, Any]]:
    """The files of ``bundle`` and its JSON values; checks everything before anything is written."""
    if not isinstance(bundle, dict):
        raise TypeError(f"bundle: expected a dict of arrays/frames/values, got {type(bundle).__name__}")
    files: list[_File] = []
    values: dict[str, Any] = {}
    for key, value in bundle.items():
        name = _safe(key)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"bundle[{key!r}]: object arrays are not stored; use a DataFrame")
            files.append((f"{name}.npy", _npy(value)))
        elif sp.issparse(value):
            m = sp.csr_matrix(value)
            for part in ("indptr", "indices", "data"):
                files.append((f"{name}.csr.{part}.npy", _npy(getattr(m, part))))
            values[f"{name}.csr.shape"] = list(m.shape)
        elif isinstance(value, pl.DataFrame):
            files.append((f"{name}.arrow", lambda f, v=value: v.write_ipc(f, compression="uncompressed")))
        else:
            values[name] = value
    encoded = json.dumps(values).encode()  # fails here, before any write, on a value JSON cannot hold
    files.append((_VALUES, lambda f: f.write(encoded)))
    return files, values


def _read_manifest(path: StoragePath) -> dict[str, Any] | None:
    manifest = path / MANIFEST
    try:
        # on an object store a plain GET: fsspec's open() would check the object against metadata
        # it cached earlier, and the manifest is the one object that is overwritten
        data = manifest.read_bytes() if _is_local(manifest) else manifest.fs.cat_file(manifest.path)
    except FileNotFoundError:
        return None
    return json.loads(data)


def _remove(path: StoragePath) -> None:
    if _is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.fs.rm(path.path, recursive=True)
        except FileNotFoundError:
            pass


def _versions(path: StoragePath) -> Iterator[str]:
    try:
        if _is_local(path):
            names = [p.name for p in path.iterdir()]
        else:  # a fresh listing: other processes write here too
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in path.fs.ls(path.path, detail=False, refresh=True)]
    except FileNotFoundError:
        return
    yield from (n for n in names if n.startswith(_VERSION_PREFIX))


def write_bundle(path: StoragePath, bundle: dict[str, Any]) -> int:
    """Writes ``bundle`` at ``path`` (a directory or an object-store prefix); readers see the old
    bundle or this one, never a mix (see the module docstring). Returns the bytes written."""
    files, _ = _bundle_files(bundle)
    version = f"{_VERSION_PREFIX}{uuid.uuid4().hex}"
    vdir = path / version
    previous = _read_manifest(path)
    try:
        if _is_local(path):
            vdir.mkdir(parents=True)
            for name, write in files:
                with open(vdir / name, "wb") as f:
                    write(f)
            size = sum((vdir / name).stat().st_size for name, _ in files)
        else:
            blobs = {}
            for name, write in files:
                buf = io.BytesIO()
                write(buf)
                blobs[(vdir / name).path] = buf.getvalue()
            size = sum(len(b) for b in blobs.values())
            path.fs.pipe(blobs)  # one request per file, sent concurrently
        manifest = json.dumps({"version": version, "files": [name for name, _ in files], "bytes": size}).encode()
        if _is_local(path):
            tmp = path / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(manifest)
            os.replace(tmp, path / MANIFEST)
        else:
            path.fs.pipe_file((path / MANIFEST).path, manifest)  # one PUT: atomic for readers
    except BaseException:
        _remove(vdir)
        if previous is None and _is_local(path) and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise
    keep = {version, previous["version"] if previous else None}
    for old in _versions(path):
        if old not in keep:
            _remove(path / old)
    return size


def read_bundle(path: StoragePath) -> dict[str, Any]:
    """The bundle stored at ``path``: the files its manifest names, memory-mapped where local."""
    manifest = _read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(
            f"{path}: no stored output here; materialize the upstream asset (or partition) first"
        )
    vdir = path / manifest["version"]
    names = manifest["files"]
    sources: dict[str, Any]
    if _is_local(vdir):
        sources = {name: vdir / name for name in names}
    else:
        fetched = vdir.fs.cat([(vdir / name).path for name in names])  # concurrent GETs
        sources = {name: io.BytesIO(fetched[(vdir / name).path]) for name in names}
    mmap = "r" if _is_local(vdir) else None
    values = json.loads(sources[_VALUES].read_bytes() if _is_local(vdir) else sources[_VALUES].getvalue())
    bundle: dict[str, Any] = {k: v for k, v in values.items() if not k.endswith(".csr.shape")}
    for key, shape in values.items():
        if key.endswith(".csr.shape"):
            name = key[: -len(".csr.shape")]
            parts = {p: np.load(sources[f"{name}.csr.{p}.npy"], mmap_mode=mmap) for p in ("data", "indices", "indptr")}
            bundle[name] = sp.csr_matrix(
                (parts["data"], parts["indices"], parts["indptr"]), shape=tuple(shape), copy=False
            )
    for name in names:
        if ".csr." in name:
            continue
        if name.endswith(".npy"):
            bundle[name[:-4]] = np.load(sources[name], mmap_mode=mmap)
        elif name.endswith(".arrow"):
            bundle[name[:-6]] = pl.read_ipc(sources[name])
    return bundle


class BundleIOManager(dg.ConfigurableIOManager):
    """Stores bundles (dicts of arrays, CSR matrices, DataFrames, JSON values) as files, on a local
    disk or on object storage."""

    base_dir: str | None = Field(
        default=None,
        description="Where the outputs go: a directory, or an fsspec URL such as s3://bucket/prefix. "
        f"Default: ${STORAGE_URL_ENV} when the run starts, else <instance storage directory>/feedrank.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for an object store, e.g. {endpoint_url: http://minio:9000}; "
        "credentials are better left to the AWS_* environment variables.",
    )

    def _root(self, context: dg.InputContext | dg.OutputContext) -> StoragePath:
        base = self.base_dir or os.environ.get(STORAGE_URL_ENV)
        if not base:
            base = str(pathlib.Path(context.step_context.instance.storage_directory()) / "feedrank")
        return storage_path(base, self.storage_options)

    def _asset_dir(self, context: dg.InputContext | dg.OutputContext) -> StoragePath:
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
        t = time.perf_counter()
        total = sum(write_bundle(base / key, bundle) for key, bundle in parts.items())
        context.add_output_metadata(
            {
                "stored_bytes": dg.MetadataValue.int(total),
                "store_seconds": dg.MetadataValue.float(round(time.perf_counter() - t, 4)),
                "path": str(base),
            }
        )

    def load_input(self, context: dg.InputContext) -> Any:
        base = self._asset_dir(context)
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if len(keys) == 1:
                return read_bundle(base / keys[0])
            return {key: read_bundle(base / key) for key in keys}
        return read_bundle(base / _UNPARTITIONED)
