"""The shard list, the val split, the downloader CLI and the row-group readers, against the offline fixture."""
import os

import pyarrow.parquet as pq

from nanochat import dataset


def test_download_and_splits(hub_mirror, base_dir):
    paths = dataset.download_shards(2, num_workers=2)
    names = [os.path.basename(p) for p in paths]
    assert names == ["shard_00000.parquet", "shard_00001.parquet", "shard_00005.parquet"]  # 2 train + last = val
    assert [os.path.basename(p) for p in dataset.list_parquet_files("val")] == ["shard_00005.parquet"]
    assert len(dataset.list_parquet_files("train")) == 2
    assert not any(p.endswith(".tmp") for p in os.listdir(dataset.data_dir()))


def test_parquets_iter_batched_matches_pyarrow(hub_mirror, base_dir):
    dataset.download_shards(3, num_workers=2)
    batches = list(dataset.parquets_iter_batched("train"))
    expected = []
    for p in dataset.list_parquet_files("train"):
        pf = pq.ParquetFile(p)
        for rg in range(pf.num_row_groups):
            expected.append(pf.read_row_group(rg).column("text").to_pylist())
    assert batches == expected and all(isinstance(t, str) for t in batches[0])
    # start/step partition the row groups with nothing lost or repeated
    parts = [list(dataset.parquets_iter_batched("train", start=r, step=2)) for r in range(2)]
    assert sorted(map(tuple, parts[0] + parts[1])) == sorted(map(tuple, expected))
    # the val split never overlaps train
    val = list(dataset.parquets_iter_batched("val"))
    assert val and not set(val[0]) & set(t for b in batches for t in b)


def test_auto_download_on_first_use(hub_mirror, base_dir):
    assert dataset.list_parquet_files() == []
    first = next(dataset.parquets_iter_batched("val"))
    assert len(first) > 0
    assert len(dataset.list_parquet_files("train")) == dataset.num_shards() - 1   # fixture has fewer than 8


def test_cli(hub_mirror, base_dir, capsys):
    dataset.main(["-n", "1", "-w", "2"])
    assert "2 shards (1 train + 1 val)" in capsys.readouterr().out
