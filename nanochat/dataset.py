"""
The pretraining corpus: parquet shards of raw web text with a `text` column.

Design choices:
- the data is a list of shards named `shard_00000.parquet`, ... in a hub dataset repo; the default is
  `karpathy/fineweb-edu-100b-shuffle` (1823 shards of ~250M characters, already shuffled); the env var
  `NANOCHAT_PRETRAIN_DATASET` (or `--dataset`) picks another with the same layout, e.g. the offline fixture
  `nanochat-fixtures/prose-mix` (6 shards)
- every byte comes through `nanochat.download.download_hub_file` (retries, atomic rename, mirrors via HF_ENDPOINT)
- the dataset's LAST shard is the validation split, whatever was downloaded: train never sees it, and
  `-n 8` means "8 training shards + the validation shard"
- the unit of reading is a parquet row group (about 1024 documents in FineWeb-Edu); the dataloader shards work
  across DDP ranks inside a row group, so any number of ranks works even on a one-row-group shard
- a split with no local shards downloads a few on first use (tokenizer training and chapters just work)

    python -m nanochat.dataset -n 8          # 8 train shards + the val shard, 4 in parallel
"""
import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pyarrow.parquet as pq

from nanochat.common import get_base_dir

DEFAULT_DATASET = "karpathy/fineweb-edu-100b-shuffle"
# Number of shards of the datasets we know (the last one is the validation shard).
KNOWN_NUM_SHARDS = {
    "karpathy/fineweb-edu-100b-shuffle": 1823,
    "nanochat-fixtures/prose-mix": 6,
}
AUTO_DOWNLOAD_SHARDS = 8   # training shards fetched on first use when a split has none locally


def dataset_name() -> str:
    return os.environ.get("NANOCHAT_PRETRAIN_DATASET") or DEFAULT_DATASET


def num_shards(dataset: str | None = None) -> int:
    dataset = dataset or dataset_name()
    if "NANOCHAT_PRETRAIN_NUM_SHARDS" in os.environ:   # escape hatch for a dataset we do not know
        return int(os.environ["NANOCHAT_PRETRAIN_NUM_SHARDS"])
    if dataset not in KNOWN_NUM_SHARDS:
        raise ValueError(f"unknown shard count for dataset {dataset!r}; set NANOCHAT_PRETRAIN_NUM_SHARDS")
    return KNOWN_NUM_SHARDS[dataset]


def index_to_filename(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def data_dir(dataset: str | None = None) -> str:
    """Where the shards land: the download cache, `<base>/hub/<dataset>/`."""
    return os.path.join(get_base_dir(), "hub", dataset or dataset_name())


def list_parquet_files(split: str | None = None, dataset: str | None = None) -> list[str]:
    """Local shard paths, sorted. split=None: all; "train": all but the val shard; "val": the val shard."""
    dataset = dataset or dataset_name()
    folder = data_dir(dataset)
    if not os.path.isdir(folder):
        return []
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.startswith("shard_") and f.endswith(".parquet"))
    if split is None:
        return paths
    assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
    val_name = index_to_filename(num_shards(dataset) - 1)
    if split == "val":
        return [p for p in paths if os.path.basename(p) == val_name]
    return [p for p in paths if os.path.basename(p) != val_name]


def download_shard(index: int, dataset: str | None = None) -> str:
    from nanochat.download import download_hub_file
    return download_hub_file(dataset or dataset_name(), index_to_filename(index))


def download_shards(n: int = AUTO_DOWNLOAD_SHARDS, num_workers: int = 4, dataset: str | None = None) -> list[str]:
    """Download the first `n` training shards (-1: all) plus the validation shard, `num_workers` at a time."""
    from tqdm.auto import tqdm
    dataset = dataset or dataset_name()
    total = num_shards(dataset)
    n_train = total - 1 if n < 0 else min(n, total - 1)
    indices = list(range(n_train)) + [total - 1]
    paths = {}
    disable = os.environ.get("NANOCHAT_NO_PROGRESS") == "1"
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool, \
            tqdm(total=len(indices), unit="shard", desc=f"{dataset}", disable=disable) as bar:
        futures = {pool.submit(download_shard, i, dataset): i for i in indices}
        for fut in as_completed(futures):
            paths[futures[fut]] = fut.result()   # re-raises a DownloadError with its clear message
            bar.update(1)
    return [paths[i] for i in indices]


def ensure_split(split: str) -> list[str]:
    """The split's local shards, downloading some first if there are none."""
    paths = list_parquet_files(split)
    if not paths:
        print(f"[dataset] no local {split} shards of {dataset_name()}; downloading "
              f"{AUTO_DOWNLOAD_SHARDS} train shards + the val shard into {data_dir()}", flush=True)
        download_shards(AUTO_DOWNLOAD_SHARDS)
        paths = list_parquet_files(split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards for {dataset_name()} in {data_dir()}")
    return paths


def iter_row_groups(split: str, start_shard: int = 0, start_row_group: int = 0):
    """Yield (shard_index, row_group_index, texts) in order, from the given position, one pass."""
    paths = ensure_split(split)
    for si in range(start_shard, len(paths)):
        pf = pq.ParquetFile(paths[si])
        first = start_row_group if si == start_shard else 0
        for rg in range(first, pf.num_row_groups):
            yield si, rg, pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()


def parquets_iter_batched(split: str, start: int = 0, step: int = 1):
    """Yield the texts of each row group (a list of str), taking row groups start, start+step, ... of the split.

    One pass over the split (the tokenizer trainer's reader); use start=rank, step=world_size to split row groups
    across processes.
    """
    k = 0
    for _, _, texts in iter_row_groups(split):
        if k % step == start:
            yield texts
        k += 1


def main(argv=None):
    ap = argparse.ArgumentParser(description="Download pretraining shards (plus the validation shard).")
    ap.add_argument("-n", "--num-files", type=int, default=AUTO_DOWNLOAD_SHARDS, help="training shards, -1 = all")
    ap.add_argument("-w", "--num-workers", type=int, default=4, help="parallel downloads")
    ap.add_argument("--dataset", type=str, default=None, help=f"hub dataset (default: env or {DEFAULT_DATASET})")
    args = ap.parse_args(argv)
    if args.dataset:
        os.environ["NANOCHAT_PRETRAIN_DATASET"] = args.dataset
    t0 = time.time()
    paths = download_shards(args.num_files, args.num_workers)
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} shards ({len(paths) - 1} train + 1 val) of {dataset_name()} in {data_dir()}: "
          f"{size / 1e6:.1f} MB, {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
