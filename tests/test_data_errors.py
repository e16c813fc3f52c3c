"""Bad input to the data commands (corrupt cache, bad dates, unreadable universes, network failures, missing
optional packages) ends in one line naming the file, option or asset, never in a traceback."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import ccxt
import pandas as pd
import pyarrow.parquet as pq
import pytest

from marketgpt.cli import main
from marketgpt.data import CandleCache, download_universe, load_candles, load_universe, universe_info
from marketgpt.data.download import check_dates
from marketgpt.data.providers import CCXTProvider, FilesProvider
from marketgpt.errors import MarketGPTError

FIXTURES = Path(__file__).parent / "fixtures"
DAY_MS = 86_400_000
CANDLES = "date,open,high,low,close,volume\n" + "".join(
    f"2020-01-0{d},10,12,9,11,100\n" for d in range(1, 8))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("marketgpt: error: ")
    return err[0]


def goog_universe(tmp_path) -> Path:
    path = tmp_path / "goog.csv"
    path.write_text("symbol,category\nGOOG,us_stocks\n")
    return path


def cached_files_universe(tmp_path) -> tuple[pd.DataFrame, CandleCache]:
    """One asset downloaded through the files provider into a cache under tmp_path."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "XYZ.csv").write_text(CANDLES)
    universe = pd.DataFrame([{"symbol": "XYZ", "category": "us_stocks", "name": "", "yfinance": "XYZ", "ccxt": ""}])
    cache = CandleCache(tmp_path / "cache", "files")
    assert download_universe(universe, FilesProvider(src), cache).updated == {"XYZ": 7}
    return universe, cache


# --- corrupt cache files ---------------------------------------------------------------------------------------------

def test_info_on_garbage_cache_file_names_it(tmp_path, capsys):
    universe = goog_universe(tmp_path)
    argv = ["data", "download", "--universe", str(universe), "--provider", "sample", "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    goog = tmp_path / "sample" / "GOOG.parquet"
    goog.write_bytes(b"garbage bytes, not parquet")
    capsys.readouterr()
    assert main(["data", "info", "--universe", str(universe), "--provider", "sample", "--data-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert str(goog) in line and "unreadable cache file" in line and "delete it and download again" in line


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_provenance(path: Path, meta: dict) -> None:
    pq.write_table(pq.read_table(path).replace_schema_metadata(meta), path)


def drop_column(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["close"]).replace_schema_metadata(table.schema.metadata), path)


CANDLES_DAMAGED = [(truncate, "unreadable cache file"), (drop_column, "no column(s) close")]
PROVENANCE_DAMAGED = [(lambda path: set_provenance(path, {}), "no marketgpt provenance"),
                      (lambda path: set_provenance(path, {b"marketgpt": b"{not json"}), "JSONDecodeError")]


def assert_names_the_file(message: str, path: Path, reason: str) -> None:
    assert str(path) in message and reason in message and message.endswith("delete it and download again")
    assert "\n" not in message


@pytest.mark.parametrize("damage, reason", CANDLES_DAMAGED + PROVENANCE_DAMAGED)
def test_info_and_download_name_the_damaged_cache_file(tmp_path, damage, reason):
    universe, cache = cached_files_universe(tmp_path)
    damage(cache.path("XYZ"))
    with pytest.raises(MarketGPTError) as info:
        universe_info(universe, cache)
    assert_names_the_file(str(info.value), cache.path("XYZ"), reason)
    report = download_universe(universe, FilesProvider(tmp_path / "src"), cache)
    assert_names_the_file(report.failed["XYZ"], cache.path("XYZ"), reason)


@pytest.mark.parametrize("damage, reason", CANDLES_DAMAGED)
def test_loading_damaged_candles_names_the_file(tmp_path, damage, reason):
    universe, cache = cached_files_universe(tmp_path)
    damage(cache.path("XYZ"))
    with pytest.raises(MarketGPTError) as info:
        load_candles(universe, "files", tmp_path / "cache")
    assert_names_the_file(str(info.value), cache.path("XYZ"), reason)


# --- dates -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dates, message", [
    (["--start", "notadate"], "--start 'notadate' is not a date; expected YYYY-MM-DD"),
    (["--end", "notadate"], "--end 'notadate' is not a date; expected YYYY-MM-DD"),
    (["--start", "2020-02-30"], "--start '2020-02-30' is not a date"),
    (["--end", "01/02/2020"], "--end '01/02/2020' is not a date"),
    (["--start", "2020-02-01", "--end", "2020-01-31"], "--start 2020-02-01 is after --end 2020-01-31"),
])
def test_download_rejects_bad_dates_before_fetching(tmp_path, capsys, dates, message):
    assert main(["data", "download", "--case", "sample", "--data-dir", str(tmp_path), *dates]) == 2
    assert message in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_dates_are_zero_padded_for_the_cache():
    assert check_dates("2004-8-19", "") == ("2004-08-19", "")
    assert check_dates("", "") == ("", "")


# --- universe files --------------------------------------------------------------------------------------------------

def test_universe_that_is_a_directory(tmp_path, capsys):
    assert main(["data", "info", "--case", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path) in line and "IsADirectoryError" in line


def test_empty_universe_file(tmp_path, capsys):
    path = tmp_path / "u.csv"
    path.write_text("")
    assert main(["data", "info", "--case", str(path), "--data-dir", str(tmp_path)]) == 2
    assert f"{path}: the universe file is empty" in one_error_line(capsys)


def test_not_cached_message_prints_a_command_that_works(tmp_path, capsys):
    universe_csv = tmp_path / "my universe.csv"
    universe_csv.write_text("symbol,category\nXYZ,us_stocks\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "XYZ.csv").write_text(CANDLES)
    universe, provider, data_dir = load_universe(str(universe_csv)), f"files:{src}", tmp_path / "cache"
    with pytest.raises(MarketGPTError, match="not cached") as info:
        load_candles(universe, provider, data_dir, fetch_offline=False)
    command = shlex.split(str(info.value).split("`")[1])
    assert command[:3] == ["marketgpt", "data", "download"] and str(universe_csv) in command
    assert main(command[1:]) == 0
    assert len(load_candles(universe, provider, data_dir, fetch_offline=False)) == 7


def test_not_cached_message_names_the_case(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MARKETGPT_DATA", raising=False)
    with pytest.raises(MarketGPTError, match=r"run `marketgpt data download --case c --provider ccxt` first"):
        load_candles(load_universe("c"), "ccxt")


# --- network failures ------------------------------------------------------------------------------------------------

class FlakyExchange:
    """Serves recorded Binance daily klines for BTC/USDT; every request for a market in `down` fails."""

    rateLimit = 50

    def __init__(self, down: dict[str, Exception]):
        self.candles = json.loads((FIXTURES / "ccxt_btc_ohlcv.json").read_text())["candles"]
        self.down = down
        self.calls = []

    def fetch_ohlcv(self, market, timeframe, since=None, limit=None):
        self.calls.append(market)
        if market in self.down:
            raise self.down[market]
        return [c for c in self.candles if c[0] >= since][:limit]


def crypto(*markets: str) -> pd.DataFrame:
    return pd.DataFrame([{"symbol": m.split("/")[0], "category": "crypto", "name": "", "yfinance": "",
                          "ccxt": m} for m in markets])


def ccxt_provider(exchange: FlakyExchange, pauses: list) -> CCXTProvider:
    now = (exchange.candles[-1][0] + 2 * DAY_MS) / 1000
    return CCXTProvider(exchange=exchange, limit=10, sleep=pauses.append, max_retries=2, now=lambda: now)


def test_network_failure_fails_one_asset_and_the_others_continue(tmp_path):
    html = ccxt.DDoSProtection("binance GET https://api.binance.com 503\n<html>\n<body>busy</body>\n</html>")
    exchange = FlakyExchange({"ETH/USDT": ccxt.RequestTimeout("binance GET timed out"), "XRP/USDT": html})
    pauses = []
    cache = CandleCache(tmp_path, "ccxt")
    report = download_universe(crypto("ETH/USDT", "BTC/USDT", "XRP/USDT"), ccxt_provider(exchange, pauses), cache,
                               start="2021-12-07")
    assert report.updated == {"BTC": 25}
    assert report.failed["ETH"] == ("ccxt binance (ETH/USDT): RequestTimeout: binance GET timed out "
                                    "(after 2 retries)")
    assert "DDoSProtection: binance GET https://api.binance.com 503 <html> <body>busy" in report.failed["XRP"]
    assert exchange.calls.count("ETH/USDT") == 3 and pauses[:2] == [pytest.approx(0.1), pytest.approx(0.2)]


def test_network_failure_of_a_cached_asset_is_a_failure_not_up_to_date(tmp_path):
    exchange = FlakyExchange({})
    cache = CandleCache(tmp_path, "ccxt")
    first_end = pd.Timestamp(exchange.candles[14][0], unit="ms").strftime("%Y-%m-%d")
    btc = crypto("BTC/USDT")
    assert download_universe(btc, ccxt_provider(exchange, []), cache, "2021-12-07", first_end).updated == {"BTC": 15}
    exchange.down["BTC/USDT"] = ccxt.NetworkError("connection reset")
    report = download_universe(btc, ccxt_provider(exchange, []), cache, "2021-12-07")
    assert report.failed == {"BTC": "ccxt binance (BTC/USDT): NetworkError: connection reset (after 2 retries)"}
    assert not report.unchanged and len(cache.read("BTC")) == 15


def test_other_exchange_errors_are_not_retried(tmp_path):
    exchange = FlakyExchange({"BTC/USDT": ccxt.ExchangeError('binance {"code":-1121,"msg":"Invalid symbol."}')})
    report = download_universe(crypto("BTC/USDT"), ccxt_provider(exchange, []), CandleCache(tmp_path, "ccxt"))
    assert report.failed["BTC"].startswith("ccxt binance (BTC/USDT): ExchangeError: binance")
    assert exchange.calls == ["BTC/USDT"]


# --- optional packages -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, package", [("yfinance", "yfinance"), ("ccxt", "ccxt"), ("ccxt:kraken", "ccxt")])
def test_missing_optional_package_is_one_line_with_the_install_command(tmp_path, capsys, monkeypatch, provider,
                                                                         package):
    monkeypatch.setitem(sys.modules, package, None)
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category,ccxt\nBTC,crypto,BTC/USDT\nETH,crypto,ETH/USDT\n")
    assert main(["data", "download", "--universe", str(universe), "--provider", provider,
                 "--data-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert f"package '{package}' is not installed" in line and "pip install 'marketgpt[providers]'" in line


def test_unknown_ccxt_exchange(tmp_path, capsys):
    assert main(["data", "download", "--case", "c", "--provider", "ccxt:nosuch", "--data-dir", str(tmp_path)]) == 2
    assert "ccxt: unknown exchange 'nosuch'" in one_error_line(capsys)


def test_cli_errors_have_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "marketgpt.cli", "data", "download", "--case", "sample",
                             "--start", "notadate", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "marketgpt: error: --start 'notadate' is not a date; expected YYYY-MM-DD"
