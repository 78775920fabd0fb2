"""`tickprop produce` against the real broker: keys, values, per-symbol order, bad rows."""

import gzip
import time

from kafka import KafkaConsumer, TopicPartition

from service.cli import main
from service.codec import decode_tick
from service.tools.produce import synthetic_ticks
from service.tools.ticks_csv import valid_ticks

CSV = """ts,symbol,price,volume
1378054800083,ES,1640.25,8
1378054800083,NQ,3001.5,1
1378054800090,ES,1640.5,
not-a-time,ES,1640.5,3
1378054800100,ES,-1,3
1378054800120,NQ,3001.75,2
1378054800130,ES,1640.25,4
1378054800140,NQ,nan,4
1378054800150,CL,107.1,5
"""


def consume_all(broker, topic, expected, timeout=20.0):
    consumer = KafkaConsumer(bootstrap_servers=broker)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    records = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def test_csv_replay_is_keyed_by_symbol_in_file_order_and_skips_bad_rows(
    broker, names, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TICKPROP_TOPIC_PARTITIONS", "3")
    path = tmp_path / "ticks.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode()))
    code = main(["produce", "--csv", str(path), "--bootstrap", broker, "--topic", names.ticks])
    out, err = capsys.readouterr()
    assert code == 0
    assert "produced 6 ticks of 3 symbols" in out and "skipped 3 bad rows" in out
    assert "bad_ts=1" in err and "bad_price=2" in err

    records = consume_all(broker, names.ticks, expected=6)
    assert len(records) == 6
    got = {}
    partition_of = {}
    for record in records:
        tick = decode_tick(record.key, record.value)  # key equals symbol, value is valid
        got.setdefault(tick.symbol, []).append(tick)
        assert partition_of.setdefault(tick.symbol, record.partition) == record.partition
    expected = {}
    for tick in valid_ticks(path):
        expected.setdefault(tick.symbol, []).append(tick)
    for symbol in expected:  # per partition, records come back in offset order
        assert got[symbol] == expected[symbol]
    assert got["ES"][1].volume is None


def test_synthetic_limit_and_rate(broker, names, capsys):
    start = time.perf_counter()
    code = main([
        "produce", "--synthetic", "1000", "--symbols", "4", "--limit", "50",
        "--rate", "250", "--bootstrap", broker, "--topic", names.ticks,
    ])  # fmt: skip
    elapsed = time.perf_counter() - start
    assert code == 0
    assert "produced 50 ticks of 4 symbols" in capsys.readouterr().out
    assert elapsed >= 49 / 250  # paced, not sent in one burst
    records = consume_all(broker, names.ticks, expected=50)
    ticks = sorted((decode_tick(r.key, r.value) for r in records), key=lambda t: t.ts_ms)
    assert ticks == list(synthetic_ticks(50, 4, 7))
