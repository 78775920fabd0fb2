"""repartition's mapping of symbols to partitions, and its plan."""

import pytest

from service.tools.repartition import Move, partition_for, plan

# Utils.murmur2 of these keys, from Apache Kafka's Java UtilsTest: the hashes Java
# producers (and kafka-python, whose default partitioner copies them) place keys by.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 3, 6, 7, 12, 100])
def test_partition_for_places_keys_as_the_java_default_partitioner(partitions):
    for key, java_hash in JAVA_MURMUR2.items():
        # Utils.toPositive(murmur2(key)) % numPartitions
        assert partition_for(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_plan_moves_only_symbols_whose_partition_changes_and_is_sorted():
    symbols = ["AAPL", "ES", "FB", "GOOG", "IBM", "MSFT"]
    stored: dict[int, list[str]] = {}
    for s in symbols:
        stored.setdefault(partition_for(s, 3), []).append(s)
    moves = plan(stored, 6)
    assert moves == sorted(
        Move(s, partition_for(s, 3), partition_for(s, 6))
        for s in symbols
        if partition_for(s, 3) != partition_for(s, 6)
    )
    assert {m.symbol for m in moves} == {"AAPL", "ES", "GOOG", "IBM"}  # FB, MSFT stay
    assert plan(stored, 3) == []
