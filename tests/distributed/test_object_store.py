"""The bundle IO manager on an S3-compatible server (moto's server mode, its own process on
loopback; cluster.py): every kind of value comes back equal, partitions are stored and loaded
apart, a bundle is replaced atomically (a reader polling while it is rewritten only ever sees one
whole version), and a missing input or a failed write say so without touching what is stored."""

import threading

import dagster as dg
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from dagster_pipeline.io_manager import MANIFEST, BundleIOManager, read_bundle, storage_path, write_bundle

from dagster_pipeline.local_services import S3Server


@pytest.fixture
def bucket_url(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3.new_bucket()}/feedrank"


def _bundle(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "ids": rng.integers(0, 1 << 40, 1000),
        "scores": rng.random((100, 7)).astype(np.float32),
        "components": rng.random((10, 7, 4)).astype(np.float32),
        "matrix": sp.random(300, 400, density=0.02, format="csr", dtype=np.float32, random_state=seed),
        "frame": pl.DataFrame({"user_id": [f"u{i}" for i in range(50)], "x": rng.random(50)}),
        "config": {"top_k": 7, "weights": {"content": 0.5}, "seed": seed},
        "snapshot_at": 1.7e9 + seed,
        "label": f"bundle {seed}",
    }


def _assert_same(expected: dict, got: dict) -> None:
    assert set(got) == set(expected)
    for key in ("ids", "scores", "components"):
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape
        np.testing.assert_array_equal(got[key], expected[key])
    assert isinstance(got["matrix"], sp.csr_matrix) and got["matrix"].shape == expected["matrix"].shape
    assert (got["matrix"] != expected["matrix"]).nnz == 0
    assert got["frame"].equals(expected["frame"])
    for key in ("config", "snapshot_at", "label"):
        assert got[key] == expected[key]


def test_every_kind_of_value_round_trips_through_the_object_store(bucket_url):
    path = storage_path(bucket_url) / "asset" / "__all__"
    assert write_bundle(path, _bundle(1)) > 0
    _assert_same(_bundle(1), read_bundle(path))
    # read by another client than the writer's: nothing cached locally
    assert path.fs.cat((path / MANIFEST).path)


def test_rewrites_keep_the_current_and_the_previous_version_only(bucket_url):
    path = storage_path(bucket_url) / "asset" / "__all__"
    for seed in range(4):
        write_bundle(path, _bundle(seed))
    _assert_same(_bundle(3), read_bundle(path))
    path.fs.invalidate_cache()
    versions = [p.name for p in path.iterdir() if p.name.startswith("version-")]
    assert len(versions) == 2


def test_a_reader_polling_during_rewrites_sees_whole_versions_only(bucket_url):
    """Each version's arrays are all filled with its number: a reader that mixed two versions, or
    read one half-written, would find two numbers (or a missing file)."""
    path = storage_path(bucket_url) / "asset" / "__all__"

    def version(n: int) -> dict:
        return {f"part{i}": np.full(20_000, n, np.int64) for i in range(6)} | {"n": n}

    write_bundle(path, version(0))
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                b = read_bundle(path)
                numbers = {int(b[f"part{i}"][0]) for i in range(6)} | {
                    int(b[f"part{i}"][-1]) for i in range(6)
                }
                assert numbers == {b["n"]}, f"a mix of versions {numbers} (manifest says {b['n']})"
                seen.append(b["n"])
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                errors.append(e)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 16):
            write_bundle(path, version(n))
    finally:
        done.set()
        thread.join(60)
    assert not errors, errors[0]
    assert len(set(seen)) >= 2, f"the reader saw only versions {set(seen)}: no rewrite overlapped a read"
    assert seen == sorted(seen), "a reader went back to an older version"


def test_a_long_lived_reader_sees_what_another_host_wrote_since(bucket_url):
    """A Celery worker keeps its filesystem client (and what it cached) from step to step, while
    other workers rewrite the bundles: its next read is of the new version, not a stale one."""
    import s3fs

    path = storage_path(bucket_url) / "asset" / "00-of-03"
    write_bundle(path, _bundle(1))
    _assert_same(_bundle(1), read_bundle(path))
    path.fs.ls(path.path, detail=True)  # listings and object details cached by this client
    other_host = storage_path(bucket_url, {"skip_instance_cache": True}) / "asset" / "00-of-03"
    assert other_host.fs is not path.fs
    write_bundle(other_host, _bundle(2))
    write_bundle(other_host, _bundle(3))
    _assert_same(_bundle(3), read_bundle(path))
    write_bundle(path, _bundle(4))  # and its own next write keeps the right versions
    _assert_same(_bundle(4), read_bundle(other_host))
    assert isinstance(path.fs, s3fs.S3FileSystem)


def test_a_failed_write_leaves_the_stored_bundle_and_a_missing_one_is_named(bucket_url):
    path = storage_path(bucket_url) / "asset" / "__all__"
    write_bundle(path, _bundle(5))
    with pytest.raises(TypeError, match="object arrays"):
        write_bundle(path, {"ok": np.arange(3), "bad": np.array(["a", None], dtype=object)})
    with pytest.raises(TypeError, match="JSON serializable"):
        write_bundle(path, {"ok": np.arange(3), "bad": object()})
    _assert_same(_bundle(5), read_bundle(path))
    with pytest.raises(FileNotFoundError, match="materialize the upstream"):
        read_bundle(storage_path(bucket_url) / "nothing" / "__all__")


shards = dg.StaticPartitionsDefinition(["00-of-03", "01-of-03", "02-of-03"])


@dg.asset(partitions_def=shards, backfill_policy=dg.BackfillPolicy.single_run())
def per_shard(context: dg.AssetExecutionContext):
    out = {k: {"v": np.full(3, int(k[:2]), np.int64), "key": k} for k in context.partition_keys}
    return out if len(out) > 1 else out[context.partition_key]


@dg.asset(partitions_def=shards)
def downstream(context: dg.AssetExecutionContext, per_shard):
    return {"sum": int(np.sum(per_shard["v"])), "key": per_shard["key"]}


def test_partitions_are_stored_apart_and_loaded_by_key(bucket_url):
    from dagster_pipeline.schedules import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    io = BundleIOManager(base_dir=bucket_url)
    # one step over the three partitions (the schedule's single run), then one partition alone
    dg.materialize([per_shard], resources={"io_manager": io},
                   tags={ASSET_PARTITION_RANGE_START_TAG: "00-of-03", ASSET_PARTITION_RANGE_END_TAG: "02-of-03"})
    for key in shards.get_partition_keys():
        dg.materialize([per_shard.to_source_asset(), downstream], resources={"io_manager": io}, partition_key=key)
    root = storage_path(bucket_url)
    for i, key in enumerate(shards.get_partition_keys()):
        assert read_bundle(root / "per_shard" / key)["key"] == key
        assert read_bundle(root / "downstream" / key) == {"sum": 3 * i, "key": key}


def test_the_storage_url_comes_from_the_environment_when_a_run_starts(bucket_url, monkeypatch):
    monkeypatch.setenv("FEEDRANK_STORAGE_URL", bucket_url)
    dg.materialize([per_shard], resources={"io_manager": BundleIOManager()}, partition_key="01-of-03")
    assert read_bundle(storage_path(bucket_url) / "per_shard" / "01-of-03")["key"] == "01-of-03"
