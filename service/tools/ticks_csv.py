"""Read tick CSV files (`ts,symbol,price[,volume]`, a header row or none, gzip allowed).

Every data row is validated by the same rules as a Kafka tick
(`service.codec.tick_from_text`), so `tickprop produce`, `tickprop backtest`
and the worker agree on which rows are valid ticks. `read_ticks` yields every
row in file order, valid or not; `valid_ticks` yields only the valid ones and
tallies the rest in a `BadRows` report.

Price files exported by other tools are read as they come: a UTF-8 byte-order mark
is skipped; `;`, tab or `|` separate the fields when the first line has more of them
than commas (with `;`, a decimal comma in a price or volume reads as a point); and a
file with no symbol column (one series, as a daily-bars export) is the symbol named
by its file name. Header names may be wrapped in angle brackets (`<DATE>`, as MetaTrader
and Finam export them), and a date and a time of day in two columns (`Date,Time`) make
one timestamp.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from service.codec import (
    BAD_TS,
    MAX_SYMBOL_CHARS,
    MISSING_FIELD,
    TOO_LARGE,
    InvalidTick,
    Tick,
    tick_from_text,
)

REQUIRED_COLUMNS = ("ts", "symbol", "price")
MAX_EXAMPLES = 10


class CsvFormatError(ValueError):
    """The file as a whole is unusable (no header, missing columns)."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row: `tick` when valid, else None with a codec `reason` and a `detail`."""

    line: int  # 1-based line number in the (decompressed) file
    tick: Tick | None
    reason: str | None = None
    detail: str = ""


@dataclass
class BadRows:
    """Tally of the invalid rows of a file: count by reason and the first few examples."""

    count: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    examples: list[CsvRow] = field(default_factory=list)

    def add(self, row: CsvRow) -> None:
        self.count += 1
        self.by_reason[row.reason or "invalid"] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(row)

    def summary(self) -> str:
        """One line per example, then the counts by reason."""
        lines = [f"line {r.line}: {r.reason}: {r.detail}" for r in self.examples]
        if self.count > len(self.examples):
            lines.append(f"... and {self.count - len(self.examples)} more")
        reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(self.by_reason.items()))
        lines.append(f"{self.count} bad rows ({reasons})" if self.count else "0 bad rows")
        return "\n".join(lines)


def open_text(path: str | Path) -> IO[str]:
    """`path` opened as UTF-8 text, gunzipped when it starts with the gzip magic bytes.

    Undecodable bytes become lone surrogates, which no valid symbol or number holds,
    so such a row is reported as invalid instead of aborting the whole file.
    """
    raw = open(path, "rb")  # noqa: SIM115 (handed to the caller inside the wrapper)
    # utf-8-sig: UTF-8 that skips a leading byte-order mark (spreadsheet exports write one)
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), "utf-8-sig", "surrogateescape", "")
    return io.TextIOWrapper(raw, "utf-8-sig", "surrogateescape", "")


def read_ticks(path: str | Path) -> Iterator[CsvRow]:
    """Every data row of `path`, in file order, as a CsvRow (valid or not).

    The header names the columns (any order, any case, `<NAME>` as NAME;
    `timestamp`/`datetime`/`date`/`time` are read as `ts`, and a `date` column with a
    `time` column as one timestamp; an adjusted close, else `close`/`last`, as `price`,
    `ticker` as `symbol`, `vol` as `volume`; without a symbol column every row is
    `file_symbol(path)`). A file without a header is read as `ts,symbol,price[,volume]`
    when its first row looks like data.
    """
    with open_text(path) as text:
        first_line = text.readline()
        delimiter = _delimiter(first_line)
        reader = csv.reader(itertools.chain([first_line], text), delimiter=delimiter)
        header = next(reader, None) if first_line else None
        columns, first = _columns(header, path)
        i_ts, i_price = columns["ts"], columns["price"]
        i_time = columns.get("time_of_day")  # with a separate date column in i_ts
        i_symbol = columns.get("symbol")
        symbol = file_symbol(path) if i_symbol is None else ""
        i_volume = columns.get("volume")
        optional = [i for i in (i_symbol, i_time) if i is not None]
        need = max(i_ts, i_price, *optional) + 1
        decimal_comma = delimiter == ";"
        while True:
            try:
                record = first if first is not None else next(reader)
                first = None
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv module's size limit
                yield CsvRow(reader.line_num, None, TOO_LARGE, f"unreadable CSV row: {exc}")
                continue
            if not record:
                continue  # blank line
            if len(record) < need:
                yield CsvRow(
                    reader.line_num, None, MISSING_FIELD, f"{len(record)} fields, need {need}"
                )
                continue
            price = record[i_price]
            volume = record[i_volume] if i_volume is not None and i_volume < len(record) else None
            if decimal_comma:
                price = _point(price)
                volume = None if volume is None else _point(volume)
            if i_symbol is not None:
                symbol = record[i_symbol]
            try:
                ts = record[i_ts] if i_time is None else _moment(record[i_ts], record[i_time])
                tick = tick_from_text(symbol, ts, price, volume)
            except InvalidTick as exc:
                yield CsvRow(reader.line_num, None, exc.reason, exc.detail)
            else:
                yield CsvRow(reader.line_num, tick)


def valid_ticks(path: str | Path, bad: BadRows | None = None) -> Iterator[Tick]:
    """The valid ticks of `path` in file order; invalid rows are tallied in `bad`."""
    for row in read_ticks(path):
        if row.tick is not None:
            yield row.tick
        elif bad is not None:
            bad.add(row)


# The header names read as each column, in order of preference: an adjusted close before
# the close, as splits and dividends would otherwise look like moves.
NAMES = {
    "ts": ("ts", "timestamp", "datetime", "date", "time"),
    "symbol": ("symbol", "ticker"),
    "price": (
        "price", "adj close", "adj_close", "adjclose", "adjusted close", "adjusted_close",
        "close", "last",
    ),
    "volume": ("volume", "vol"),
}  # fmt: skip
# Without a ts, timestamp or datetime column, a date column and a time column together
# are the timestamp (`_moment`).
SPLIT_TS = ("date", "time")
DELIMITERS = (",", ";", "\t", "|")
COMPRESSED = (".gz", ".gzip")
TABULAR = (".csv", ".tsv", ".txt")


def file_symbol(path: str | Path) -> str:
    """The symbol of a file without a symbol column: its name without the extensions
    (`AAPL.csv.gz` is AAPL), cut to the longest symbol a tick may have."""
    name = Path(path).name
    for suffixes in (COMPRESSED, TABULAR):
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix.lower()}" in suffixes:
            name = stem
    return name.strip()[:MAX_SYMBOL_CHARS].strip()


def _delimiter(line: str) -> str:
    """The field separator of a file, from its first line: the most frequent of
    DELIMITERS there, commas on a tie."""
    return max(DELIMITERS, key=line.count)


def _moment(date: str, time: str) -> str:
    """One ISO-8601 timestamp from a date and a time of day in two columns, each in the
    extended (`2024-01-02`, `09:30:00`) or the basic form (`20240102`, `093000`, `0930`),
    a time perhaps with a fraction and a zone; the time column alone when it holds the
    whole timestamp (it contains the date). InvalidTick (bad_ts) for any other time:
    Python's ISO parser would read stray digits as some time of day."""
    date, time = date.strip(), time.strip()
    if date and date in time and not time.isdigit():  # the time column repeats the date:
        return time  # it is the timestamp (all digits would read as epoch ms: not that)
    match = _TIME_OF_DAY.fullmatch(time)
    if match is None:
        raise InvalidTick(BAD_TS, f"time {time[:40]!r} is not a time of day (hh:mm[:ss])")
    hour, minute, second, rest = match.groups()
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return f"{date}T{hour}:{minute}:{second or '00'}{rest}"


# hh:mm[:ss[.fff]] or hhmm[ss[.fff]], then perhaps a zone (Z, +01:00, -0500)
_TIME_OF_DAY = re.compile(r"(\d\d):?(\d\d)(?::?(\d\d))?((?:\.\d+)?(?:[Zz]|[+-]\d\d:?\d\d)?)")


def _point(number: str) -> str:
    """A number written with a decimal comma ("73,66") in the usual notation."""
    return number.replace(",", ".") if "," in number and "." not in number else number


def _columns(header: list[str] | None, path: str | Path) -> tuple[dict[str, int], list[str] | None]:
    """Column positions, and the first row when it was data rather than a header."""
    if header is None:
        raise CsvFormatError(f"{path}: empty file, expected a header row ts,symbol,price[,volume]")
    found: dict[str, int] = {}
    for i, name in enumerate(header):
        found.setdefault(name.strip().strip("<>").strip().lower(), i)
    columns = {
        column: next(found[n] for n in names if n in found)
        for column, names in NAMES.items()
        if any(n in found for n in names)
    }
    date, time = SPLIT_TS
    if date in found and time in found and columns.get("ts") == found[date]:
        columns["time_of_day"] = found[time]
    if "ts" in columns and "price" in columns and ("symbol" in columns or file_symbol(path)):
        return columns, None
    if _looks_like_data(header):
        positions = {"ts": 0, "symbol": 1, "price": 2}
        if len(header) > 3:
            positions["volume"] = 3
        return positions, header
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    raise CsvFormatError(
        f"{path}: header {header[:6]} lacks column(s) {missing}; "
        "expected a header row ts,symbol,price[,volume]"
    )


def _looks_like_data(row: list[str]) -> bool:
    """A headerless first row: 3 or 4 fields, a symbol, and a number for the price."""
    if len(row) not in (3, 4) or not row[1].strip():
        return False
    try:
        float(row[2])
    except ValueError:
        return False
    return True
