"""The bundle IO manager stores arrays, CSR matrices and frames as files and reads them back
equal, per partition, across processes (it only needs the directory)."""

import multiprocessing

import dagster as dg
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from dagster_pipeline.io_manager import BundleIOManager, read_bundle, write_bundle

pytestmark = pytest.mark.fast


def _bundle(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    m = sp.random(50, 80, density=0.05, format="csr", dtype=np.float32, random_state=seed)
    return {
        "ids": rng.integers(0, 1 << 40, 100),
        "scores": rng.random((10, 7)).astype(np.float32),
        "matrix": m,
        "frame": pl.DataFrame({"id": [f"u{i}" for i in range(5)], "x": [1.5, 2, 3, 4, 5]}),
        "config": {"top_k": 7, "weights": {"content": 0.5}},
        "note": "text",
    }


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert (a["matrix"] != b["matrix"]).nnz == 0 and a["matrix"].shape == b["matrix"].shape
    assert a["frame"].equals(b["frame"])
    assert a["config"] == b["config"] and a["note"] == b["note"]


def test_round_trip_keeps_every_kind_of_value(tmp_path):
    size = write_bundle(tmp_path / "b", _bundle())
    assert size > 0
    _assert_same(_bundle(), read_bundle(tmp_path / "b"))


def test_rewrite_replaces_the_old_bundle(tmp_path):
    write_bundle(tmp_path / "b", _bundle(0))
    write_bundle(tmp_path / "b", _bundle(1))
    _assert_same(_bundle(1), read_bundle(tmp_path / "b"))
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary directories left


def test_rejects_values_it_cannot_store_without_pickle(tmp_path):
    with pytest.raises(TypeError, match="object arrays"):
        write_bundle(tmp_path / "b", {"x": np.array(["a", None], dtype=object)})
    with pytest.raises(TypeError, match="bundle"):
        write_bundle(tmp_path / "c", [1, 2, 3])
    assert not (tmp_path / "b").exists()


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize the upstream"):
        read_bundle(tmp_path / "nothing")


def _read_in_child(path, queue):
    b = read_bundle(path)
    queue.put((b["scores"].sum().item(), b["matrix"].nnz, b["frame"].height))


def test_another_process_reads_what_one_wrote(tmp_path):
    write_bundle(tmp_path / "b", _bundle())
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(tmp_path / "b", queue))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(60)
    b = _bundle()
    assert got == (pytest.approx(b["scores"].sum().item()), b["matrix"].nnz, 5)


shards = dg.StaticPartitionsDefinition(["a", "b", "c"])


@dg.asset(partitions_def=shards, backfill_policy=dg.BackfillPolicy.single_run())
def per_shard(context: dg.AssetExecutionContext):
    out = {k: {"v": np.full(3, ord(k), np.int64), "key": k} for k in context.partition_keys}
    return out if len(out) > 1 else out[context.partition_key]


@dg.asset(partitions_def=shards, backfill_policy=dg.BackfillPolicy.single_run())
def downstream(context: dg.AssetExecutionContext, per_shard):
    got = per_shard if len(context.partition_keys) > 1 else {context.partition_key: per_shard}
    return {k: {"sum": int(np.sum(b["v"])), "key": b["key"]} for k, b in got.items()} if len(got) > 1 else {
        "sum": int(np.sum(next(iter(got.values()))["v"])),
        "key": next(iter(got)),
    }


def test_partition_ranges_store_each_partition_separately(tmp_path):
    from dagster_pipeline.schedules import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    io = BundleIOManager(base_dir=str(tmp_path))
    dg.materialize(
        [per_shard, downstream],
        resources={"io_manager": io},
        tags={ASSET_PARTITION_RANGE_START_TAG: "a", ASSET_PARTITION_RANGE_END_TAG: "c"},
    )
    for k in "abc":
        assert read_bundle(tmp_path / "per_shard" / k)["key"] == k
        assert read_bundle(tmp_path / "downstream" / k)["sum"] == 3 * ord(k)
    # a later single-partition run reads the partition the range run stored
    dg.materialize([per_shard.to_source_asset(), downstream], resources={"io_manager": io}, partition_key="b")
    assert read_bundle(tmp_path / "downstream" / "b")["sum"] == 3 * ord("b")
