"""Malformed candle files: each gives a one-line error naming file, row and rule, or a counted drop."""

import gzip

import pandas as pd
import pytest

from marketgpt.data import CandleCache, download_universe, load_candles, load_universe, validate_candles
from marketgpt.data.providers import FilesProvider
from marketgpt.errors import MarketGPTError

HEADER = "date,open,high,low,close,volume\n"
GOOD = ["2020-01-02,10,11,9,10.5,100", "2020-01-03,10.5,12,10,11,200", "2020-01-06,11,11.5,10.5,11.2,150"]

# name -> (bad line inserted as line 3 of the file, the rule that must be named)
CASES = {
    "nan_price": ("2020-01-07,11,,10,11,100", "not_a_number"),
    "nan_literal": ("2020-01-07,11,NaN,10,11,100", "not_a_number"),
    "text_price": ("2020-01-07,11,abc,10,11,100", "not_a_number"),
    "inf_price": ("2020-01-07,11,inf,10,11,100", "non_finite"),
    "zero_price": ("2020-01-07,0,12,0,11,100", "non_positive_price"),
    "negative_price": ("2020-01-07,-1,12,-2,11,100", "non_positive_price"),
    "high_below_low": ("2020-01-07,11,9,12,11,100", "high_below_low"),
    "high_below_close": ("2020-01-07,11,11.5,10,12,100", "high_below_open_close"),
    "low_above_open": ("2020-01-07,10,12,10.5,11,100", "low_above_open_close"),
    "negative_volume": ("2020-01-07,11,12,10,11,-5", "negative_volume"),
    "bad_date": ("2020-13-45,11,12,10,11,100", "bad_date"),
    "empty_date": (",11,12,10,11,100", "bad_date"),
    "duplicate_date": ("2020-01-03,10.5,12,10,11,200", "duplicate_date"),
    "missing_volume_value": ("2020-01-07,11,12,10,11,", "not_a_number"),
    "short_row": ("2020-01-07,11,12", "not_a_number"),
}


def write(path, lines, header=HEADER, gz=False):
    text = header + "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def asset(symbol="XYZ", category="us_stocks"):
    return pd.Series({"symbol": symbol, "category": category, "name": "", "yfinance": symbol, "ccxt": ""})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_fails_with_file_line_and_rule(tmp_path, case):
    bad, rule = CASES[case]
    path = write(tmp_path / "XYZ.csv", [GOOD[0], bad, *GOOD[1:]])
    fetched = FilesProvider(tmp_path).fetch(asset(), None, None)
    with pytest.raises(MarketGPTError) as err:
        validate_candles(fetched.frame, fetched.source, "fail", fetched.row_label)
    message = str(err.value)
    assert str(path) in message and rule in message and "\n" not in message
    # the duplicate of line 4 (2020-01-03) is the inserted line 3: the first of the pair is named
    assert "line 3" in message


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_dropped_and_counted(tmp_path, case):
    bad, rule = CASES[case]
    write(tmp_path / "XYZ.csv", [GOOD[0], bad, *GOOD[1:]])
    fetched = FilesProvider(tmp_path).fetch(asset(), None, None)
    clean, counts = validate_candles(fetched.frame, fetched.source, "drop", fetched.row_label)
    expected_dropped = 2 if case == "duplicate_date" else 1
    assert counts == {rule: expected_dropped}
    assert len(clean) == 4 - expected_dropped
    assert clean.date.is_monotonic_increasing and clean.date.is_unique
    assert (clean.high >= clean[["open", "close"]].max(axis=1)).all()


def test_duplicate_date_names_the_first_of_the_pair(tmp_path):
    path = write(tmp_path / "XYZ.csv", [GOOD[0], GOOD[1], GOOD[1], GOOD[2]])
    fetched = FilesProvider(tmp_path).fetch(asset(), None, None)
    with pytest.raises(MarketGPTError, match=r"line 3 \(date 2020-01-03\).*duplicate_date"):
        validate_candles(fetched.frame, str(path), "fail", "line")


def test_corrupt_csv_row_with_extra_fields_names_the_line(tmp_path):
    path = write(tmp_path / "XYZ.csv", [GOOD[0], "2020-01-07,1,2,3,4,5,6,7", *GOOD[1:]])
    with pytest.raises(MarketGPTError, match=r"XYZ.csv: corrupt CSV: .*line 3"):
        FilesProvider(tmp_path).fetch(asset(), None, None)
    assert path.exists()


@pytest.mark.parametrize("header", ["date,open,high,close,volume\n", "day,open,high,low,close\n"])
def test_missing_column_is_named(tmp_path, header):
    write(tmp_path / "XYZ.csv", ["2020-01-02,1,2,1,1"], header=header)
    with pytest.raises(MarketGPTError, match="XYZ.csv: missing column"):
        FilesProvider(tmp_path).fetch(asset(), None, None)


def test_unsorted_rows_are_sorted_not_lost(tmp_path):
    write(tmp_path / "XYZ.csv", [GOOD[2], GOOD[0], GOOD[1]], gz=False)
    fetched = FilesProvider(tmp_path).fetch(asset(), None, None)
    clean, counts = validate_candles(fetched.frame, fetched.source)
    assert counts == {} and len(clean) == 3 and clean.date.is_monotonic_increasing


def test_blank_line_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "XYZ.csv", [GOOD[0], "", GOOD[1], CASES["high_below_low"][0]])
    fetched = FilesProvider(tmp_path).fetch(asset(), "2020-01-03", None)
    with pytest.raises(MarketGPTError, match=r"line 5 \(date 2020-01-07\).*high_below_low"):
        validate_candles(fetched.frame, str(path), "fail", fetched.row_label)


def test_volume_column_optional(tmp_path):
    write(tmp_path / "XYZ.csv", ["2020-01-02,10,11,9,10.5"], header="Date,Open,High,Low,Close\n")
    fetched = FilesProvider(tmp_path).fetch(asset(), None, None)
    clean, _ = validate_candles(fetched.frame, fetched.source)
    assert clean.volume.tolist() == [0.0]


def test_empty_and_binary_files_are_clear_errors(tmp_path):
    (tmp_path / "XYZ.csv").write_text("")
    with pytest.raises(MarketGPTError, match="XYZ.csv: the file is empty"):
        FilesProvider(tmp_path).fetch(asset(), None, None)
    (tmp_path / "XYZ.csv").unlink()
    (tmp_path / "XYZ.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(MarketGPTError, match="XYZ.csv.gz: unreadable file"):
        FilesProvider(tmp_path).fetch(asset(), None, None)


def test_unknown_ticker_in_files_provider(tmp_path):
    with pytest.raises(MarketGPTError, match="no file for asset NOPE"):
        FilesProvider(tmp_path).fetch(asset("NOPE"), None, None)


def test_drop_policy_counts_are_kept_in_cache_metadata(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write(src / "XYZ.csv", [GOOD[0], CASES["high_below_low"][0], CASES["nan_price"][0].replace("07", "08"), *GOOD[1:]])
    universe = pd.DataFrame([asset()])
    cache = CandleCache(tmp_path / "cache", "files")
    report = download_universe(universe, FilesProvider(src), cache, policy="drop")
    assert report.dropped == {"XYZ": {"not_a_number": 1, "high_below_low": 1}}
    assert cache.provenance("XYZ").dropped == {"not_a_number": 1, "high_below_low": 1}
    assert len(cache.read("XYZ")) == 3


def test_fail_policy_keeps_other_assets(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write(src / "AAA.csv", GOOD)
    write(src / "BAD.csv", [GOOD[0], CASES["high_below_low"][0]])
    universe = pd.DataFrame([asset("AAA"), asset("BAD")])
    cache = CandleCache(tmp_path / "cache", "files")
    report = download_universe(universe, FilesProvider(src), cache, policy="fail")
    assert list(report.updated) == ["AAA"] and "BAD" in report.failed
    assert "line 3" in report.failed["BAD"] and "high_below_low" in report.failed["BAD"]
    assert not cache.exists("BAD")


def test_two_csv_folders_and_two_exchanges_never_share_a_cache_file(tmp_path):
    universe_csv = tmp_path / "u.csv"
    universe_csv.write_text("symbol,category\nXYZ,us_stocks\n")
    universe = load_universe(str(universe_csv))
    for name, close in (("a", 11), ("b", 99)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "XYZ.csv").write_text("date,open,high,low,close,volume\n" + "".join(
            f"2020-01-0{d},{close},{close + 1},{close - 1},{close},100\n" for d in range(1, 4 if name == "a" else 6)))
    a = load_candles(universe, f"files:{tmp_path / 'a'}", tmp_path / "cache")
    b = load_candles(universe, f"files:{tmp_path / 'b'}", tmp_path / "cache")
    assert a.close.tolist() == [11.0] * 3 and b.close.tolist() == [99.0] * 5
    assert CandleCache(tmp_path, "files:a").root != CandleCache(tmp_path, "files:b").root
    assert CandleCache(tmp_path, "ccxt").root == CandleCache(tmp_path, "ccxt:binance").root
    assert CandleCache(tmp_path, "ccxt:binance").root != CandleCache(tmp_path, "ccxt:kraken").root
