import gzip

import pytest

from service.tools.produce import synthetic_ticks
from service.tools.ticks_csv import BadRows, CsvFormatError, read_ticks, valid_ticks


def write(tmp_path, text, name="t.csv", compress=False):
    path = tmp_path / name
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


T = 1704205800000  # epoch ms (a ts below 10^11 is refused as seconds)


def test_reads_plain_and_gzip_alike(tmp_path):
    text = f"ts,symbol,price,volume\n{T + 1},ES,1640.25,8\n{T + 2},ES,1640.5,\n"
    plain = list(valid_ticks(write(tmp_path, text)))
    zipped = list(valid_ticks(write(tmp_path, text, "t.csv.gz", compress=True)))
    assert plain == zipped
    assert [(t.ts_ms, t.price, t.volume) for t in plain] == [
        (T + 1, 1640.25, 8.0),
        (T + 2, 1640.5, None),
    ]


def test_columns_by_header_name_and_volume_optional(tmp_path):
    rows = list(valid_ticks(write(tmp_path, f"symbol,price,ts\nES,3.5,{T}\n")))
    assert [(t.symbol, t.ts_ms, t.price, t.volume) for t in rows] == [("ES", T, 3.5, None)]


def test_bad_rows_are_reported_with_line_and_reason(tmp_path):
    lines = [f"{T + 1},ES,1", "x,ES,1", f"{T + 2},ES", "", f"{T + 3},,1", f"{T + 4},ES,inf"]
    text = "\n".join(["ts,symbol,price", *lines, f"{T + 5},ES,2", ""])
    rows = list(read_ticks(write(tmp_path, text)))
    assert [(r.line, r.reason) for r in rows] == [
        (2, None),
        (3, "bad_ts"),
        (4, "missing_field"),
        (6, "bad_symbol"),
        (7, "bad_price"),
        (8, None),
    ]
    bad = BadRows()
    assert [t.ts_ms for t in valid_ticks(write(tmp_path, text), bad)] == [T + 1, T + 5]
    assert bad.count == 4 and bad.by_reason["bad_ts"] == 1
    assert "line 3: bad_ts" in bad.summary()


def test_undecodable_bytes_make_a_bad_row_not_a_crash(tmp_path):
    path = write(tmp_path, b"ts,symbol,price\n%d,\xff\xfe,1\n%d,ES,1\n" % (T, T))
    assert [r.reason for r in read_ticks(path)] == ["bad_symbol", None]


def test_missing_header_columns_stop_with_a_clear_error(tmp_path):
    with pytest.raises(CsvFormatError, match="price"):
        list(read_ticks(write(tmp_path, "ts,symbol\n1,ES\n")))
    with pytest.raises(CsvFormatError, match="empty"):
        list(read_ticks(write(tmp_path, "")))


def test_a_file_without_header_is_read_as_ts_symbol_price_volume(tmp_path):
    rows = list(
        read_ticks(write(tmp_path, "1704205800123,SPX,4742.83,1200\n1704205800124,SPX,x\n"))
    )
    assert rows[0].line == 1 and rows[0].tick is not None
    assert (rows[0].tick.symbol, rows[0].tick.ts_ms, rows[0].tick.volume) == (
        "SPX",
        1704205800123,
        1200.0,
    )
    assert (rows[1].line, rows[1].reason) == (2, "bad_price")
    three = list(valid_ticks(write(tmp_path, "2024-01-02T09:30:00Z,BTC,42000.5\n")))
    assert [(t.symbol, t.price, t.volume) for t in three] == [("BTC", 42000.5, None)]


def test_common_column_names_and_case_are_understood(tmp_path):
    text = "Date,Ticker,Close,Volume\n2024-01-02,EURUSD,1.1012,\n2024-01-03,EURUSD,1.1020,5\n"
    rows = list(valid_ticks(write(tmp_path, text)))
    assert [(t.symbol, t.price) for t in rows] == [("EURUSD", 1.1012), ("EURUSD", 1.102)]
    assert rows[1].ts_ms - rows[0].ts_ms == 86_400_000


def test_a_header_of_unknown_names_is_still_an_error_not_data(tmp_path):
    with pytest.raises(CsvFormatError, match="lacks column"):
        list(read_ticks(write(tmp_path, "when,what,howmuch\n1,ES,2\n")))


def test_shipped_data_is_all_valid():
    bad = BadRows()
    assert sum(1 for _ in valid_ticks("data/stocks_daily_2000-2013.csv.gz", bad)) == 12154
    assert bad.count == 0


def test_synthetic_series_is_deterministic_and_valid():
    a = list(synthetic_ticks(300, 3, seed=1))
    assert a == list(synthetic_ticks(300, 3, seed=1))
    assert a != list(synthetic_ticks(300, 3, seed=2))
    assert {t.symbol for t in a} == {"SYN0", "SYN1", "SYN2"}
    assert all(t.price > 0 for t in a)
    assert [t.ts_ms for t in a] == sorted(t.ts_ms for t in a)


# Price files as other tools export them (tickprop backtest is run on files we never saw).
def test_a_byte_order_mark_and_crlf_lines_are_read_as_plain_csv(tmp_path):
    text = f"ts,symbol,price\r\n{T},ES,1640.25\r\n{T + 1},ES,1640.5\r\n"
    path = write(tmp_path, "\ufeff" + text, "bom.csv.gz", compress=True)
    assert [(t.symbol, t.price) for t in valid_ticks(path)] == [("ES", 1640.25), ("ES", 1640.5)]


def test_semicolons_tabs_and_bars_separate_fields_and_semicolon_files_take_decimal_commas(
    tmp_path,
):
    semicolons = f"ts;symbol;price;volume\n{T};DAX;15234,5;3\n{T + 1};DAX;15235.25;1,5\n"
    rows = list(valid_ticks(write(tmp_path, semicolons)))
    assert [(t.price, t.volume) for t in rows] == [(15234.5, 3.0), (15235.25, 1.5)]
    for sep in ("\t", "|"):
        text = sep.join(["ts", "symbol", "price"]) + "\n" + sep.join([str(T), "ES", "2.5"]) + "\n"
        assert [t.price for t in valid_ticks(write(tmp_path, text))] == [2.5]
    # commas stay the separator when the first line has as many of them
    assert [t.price for t in valid_ticks(write(tmp_path, f"ts,symbol,price\n{T},A;B,2\n"))] == [2]


def test_a_daily_bars_export_without_a_symbol_column_is_the_series_its_file_names(tmp_path):
    text = (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2013-01-02,10,11,9,10.5,5.25,100\n"
        "2013-01-03,10.5,12,10,11.5,5.75,200\n"
    )
    rows = list(valid_ticks(write(tmp_path, text, "AAPL.csv.gz", compress=True)))
    # the adjusted close, not the close: a split would otherwise look like a crash
    assert [(t.symbol, t.price, t.volume) for t in rows] == [
        ("AAPL", 5.25, 100.0),
        ("AAPL", 5.75, 200.0),
    ]
    closes = "Date,Close\n2013-01-02,10.5\n"
    assert [(t.symbol, t.price) for t in valid_ticks(write(tmp_path, closes, "spx.TXT"))] == [
        ("spx", 10.5)
    ]


def test_a_date_and_a_time_column_make_one_timestamp_in_either_iso_form(tmp_path):
    """Intraday bars often come as Date,Time; MetaTrader and Finam write <DATE>,<TIME> in
    the basic form (20240102, 093000) with every header name in angle brackets."""
    nine_thirty = 1_704_187_800_000  # 2024-01-02T09:30:00Z
    extended = "Date,Time,Open,Close,Volume\n2024-01-02,09:30:00,1,2.5,7\n2024-01-02,09:31,2,3,1\n"
    rows = list(valid_ticks(write(tmp_path, extended, "ES.csv")))
    assert [(t.symbol, t.ts_ms, t.price, t.volume) for t in rows] == [
        ("ES", nine_thirty, 2.5, 7.0),
        ("ES", nine_thirty + 60_000, 3.0, 1.0),
    ]
    basic = (
        "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>\n"
        "SBER,1,20240102,093000,1,1,1,271.5,10\n"
        "SBER,1,20240102,0931,1,1,1,271.25,3\n"
    )
    rows = list(valid_ticks(write(tmp_path, basic, "export.txt")))
    assert [(t.symbol, t.ts_ms, t.price, t.volume) for t in rows] == [
        ("SBER", nine_thirty, 271.5, 10.0),
        ("SBER", nine_thirty + 60_000, 271.25, 3.0),
    ]
    # A time that is no time is that row's bad_ts, not a silently wrong timestamp
    bad = BadRows()
    assert list(valid_ticks(write(tmp_path, "Date,Time,Close\n2024-01-02,9h30,1\n"), bad)) == []
    assert bad.by_reason == {"bad_ts": 1}
    # A time column that holds the whole timestamp (it repeats the date) is read alone
    full = "Date,Time,Close\n2024-01-02,2024-01-02 09:30:00,1\n"
    assert [t.ts_ms for t in valid_ticks(write(tmp_path, full))] == [nine_thirty]
    # ... but not as digits alone, which would read as epoch ms (the year 2611): bad_ts
    bad = BadRows()
    digits = "Date,Time,Close\n20240102,20240102093000,1\n"
    assert list(valid_ticks(write(tmp_path, digits), bad)) == [] and bad.by_reason == {"bad_ts": 1}
    # A single timestamp column still wins over a date and a time beside it
    both = f"ts,date,time,symbol,price\n{T},2024-01-02,09:30,ES,1\n"
    assert [t.ts_ms for t in valid_ticks(write(tmp_path, both))] == [T]


def test_a_time_column_holds_a_time_of_day_or_the_row_is_bad_ts(tmp_path):
    """Python's ISO parser reads stray digits after a T as some time (`2024-01-02T2024010209`
    is 20:24:01.0209), so the time column is checked for hh:mm[:ss] itself."""
    text = (
        "Date,Time,Close\n"
        "2024-01-02,09:30:00.250Z,1\n"  # a fraction and a zone pass through
        "2024-01-02,0930-0500,2\n"
        "2024-01-02,2024010209,3\n"  # digits that are no time of day
        "2024-01-02,9:30,4\n"  # one digit of hour: not ISO
        "2024-01-02,,5\n"
        "2024-01-02,25:00,6\n"  # the form of a time, but none
    )
    bad = BadRows()
    rows = list(valid_ticks(write(tmp_path, text), bad))
    nine_thirty = 1_704_187_800_000  # 2024-01-02T09:30:00Z
    assert [t.ts_ms for t in rows] == [nine_thirty + 250, nine_thirty + 5 * 3_600_000]
    assert bad.by_reason == {"bad_ts": 4}
