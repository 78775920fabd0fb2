"""`tickprop inspect` names a symbol whose state sits in more than one partition."""

from __future__ import annotations

import json
import subprocess
import sys

from worker_kit import ROOT, Names, store_for, worker_env

from model.learner import LearnerConfig, OnlineLearner


def test_a_symbol_in_two_partitions_is_reported_not_hidden(broker: str, redis_url: str) -> None:
    names = Names.fresh()
    store = store_for(redis_url, names.group)
    hashes = {}
    for partition, n_ticks in ((0, 30), (3, 50)):  # two models of ES, trained apart
        learner = OnlineLearner("ES", LearnerConfig())
        for i in range(n_ticks):
            learner.on_tick(1_704_205_800_000 + i, 100.0 + (i % 7))
        claim = store.claim(names.ticks, partition)
        blobs = {"ES": learner.to_bytes()}
        store.checkpoint(
            names.ticks, partition, claim.epoch, n_ticks, blobs, stored_offset=claim.offset
        )
        hashes[f"{names.ticks}/{partition}"] = learner.weights_sha256()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "inspect"],
        cwd=ROOT, env=worker_env(broker, redis_url, names), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    split = report["split_symbols"]["ES"]
    assert {where: copy["weights_sha256"] for where, copy in split.items()} == hashes
    assert "'ES' has state in 2 partitions" in done.stderr
    assert report["symbols"]["ES"] == split[f"{names.ticks}/3"]
