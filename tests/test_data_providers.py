"""Providers on recorded responses, the cache round trip and incremental update, and the real-data folder."""

import importlib.metadata
import json
import re
from pathlib import Path

import ccxt
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement

from marketgpt.data import CandleCache, download_universe, load_candles, load_universe
from marketgpt.data.providers import CCXTProvider, FilesProvider, SampleProvider, YFinanceProvider
from marketgpt.errors import MarketGPTError

FIXTURES = Path(__file__).parent / "fixtures"
DAY_MS = 86_400_000
SAMPLE = ["SPX", "IXIC", "AAPL", "GOOG", "IBM", "MSFT"]


def asset(symbol, category="us_stocks", yfinance="", ccxt_market=""):
    return pd.Series({"symbol": symbol, "category": category, "name": "", "yfinance": yfinance or symbol,
                      "ccxt": ccxt_market})


def recorded_yfinance(calls):
    recorded = pd.read_csv(FIXTURES / "yfinance_download.csv", header=[0, 1], index_col=0, parse_dates=True)

    def download(ticker, start, end, **kwargs):
        calls.append((ticker, start, end, kwargs))
        if ticker != "SPY":
            return recorded.iloc[0:0]
        index = recorded.index
        return recorded[(index >= pd.Timestamp(start)) & (index < pd.Timestamp(end or "2100-01-01"))]

    return download


def test_yfinance_multiindex_frame_becomes_candles():
    calls = []
    fetched = YFinanceProvider(recorded_yfinance(calls)).fetch(asset("SPY"), "2018-01-01", "2018-01-10")
    frame = fetched.frame
    assert list(frame.columns) == ["date", "Close", "High", "Low", "Open", "Volume"]
    assert frame.date.min() == pd.Timestamp("2018-01-02") and frame.date.max() == pd.Timestamp("2018-01-10")
    ticker, start, end, kwargs = calls[0]
    assert (ticker, start, end) == ("SPY", "2018-01-01", "2018-01-11") and kwargs["auto_adjust"] is False


def test_yfinance_unknown_ticker_is_one_line_error():
    with pytest.raises(MarketGPTError, match=r"yfinance: no data for NOPE .*unknown ticker"):
        YFinanceProvider(recorded_yfinance([])).fetch(asset("NOPE"), "2018-01-01", None)


class RecordedExchange:
    """Serves recorded Binance daily klines page by page, and fails once with a rate-limit error."""

    rateLimit = 50

    def __init__(self, candles, fail_first=True):
        self.candles = candles
        self.calls = []
        self.fail_next = fail_first

    def fetch_ohlcv(self, market, timeframe, since=None, limit=None):
        self.calls.append((market, timeframe, since, limit))
        if self.fail_next:
            self.fail_next = False
            raise ccxt.RateLimitExceeded("429 Too Many Requests")
        return [c for c in self.candles if c[0] >= since][:limit]


def recorded_ccxt(now_ms=None, fail_first=True):
    candles = json.loads((FIXTURES / "ccxt_btc_ohlcv.json").read_text())["candles"]
    exchange = RecordedExchange(candles, fail_first)
    pauses = []
    now = (now_ms or candles[-1][0] + 2 * DAY_MS) / 1000
    provider = CCXTProvider(exchange=exchange, limit=10, sleep=pauses.append, now=lambda: now)
    return provider, exchange, pauses, candles


def test_ccxt_paginates_with_since_and_limit_and_pauses():
    provider, exchange, pauses, candles = recorded_ccxt()
    start = pd.Timestamp(candles[0][0], unit="ms").strftime("%Y-%m-%d")
    fetched = provider.fetch(asset("BTC", "crypto", "BTC-USD", "BTC/USDT"), start, None)
    assert len(fetched.frame) == 25 and fetched.frame.date.is_unique
    sinces = [c[2] for c in exchange.calls]
    assert sinces == [candles[0][0], candles[0][0], candles[10][0], candles[20][0]]
    assert all(c[3] == 10 and c[1] == "1d" and c[0] == "BTC/USDT" for c in exchange.calls)
    assert pauses[0] == pytest.approx(0.1)                 # back-off after the 429
    assert pauses[1:] == [pytest.approx(0.05)] * 2          # the exchange's rate limit between pages


def test_ccxt_leaves_out_the_unfinished_day():
    candles = json.loads((FIXTURES / "ccxt_btc_ohlcv.json").read_text())["candles"]
    provider, _, _, _ = recorded_ccxt(now_ms=candles[-1][0] + DAY_MS // 2, fail_first=False)
    fetched = provider.fetch(asset("BTC", "crypto", "BTC-USD", "BTC/USDT"), "2021-12-01", None)
    assert fetched.frame.date.iloc[-1] == pd.Timestamp(candles[-2][0], unit="ms").strftime("%Y-%m-%d")


def test_ccxt_resumes_where_the_cache_ends(tmp_path):
    provider, exchange, _, candles = recorded_ccxt(fail_first=False)
    btc = pd.DataFrame([asset("BTC", "crypto", "BTC-USD", "BTC/USDT")])
    cache = CandleCache(tmp_path, "ccxt")
    first_end = pd.Timestamp(candles[14][0], unit="ms").strftime("%Y-%m-%d")
    report = download_universe(btc, provider, cache, start="2021-12-07", end=first_end)
    assert report.updated == {"BTC": 15}
    exchange.calls.clear()
    report = download_universe(btc, provider, cache, start="2021-12-07")
    assert report.updated == {"BTC": 10}
    assert exchange.calls[0][2] == candles[15][0]          # the next fetch starts the day after the cache
    assert len(cache.read("BTC")) == 25


def test_cache_round_trip_keeps_values_and_provenance(tmp_path):
    universe = load_universe("sample")
    assert universe.symbol.tolist() == SAMPLE
    cache = CandleCache(tmp_path, "sample")
    report = download_universe(universe, SampleProvider(), cache)
    assert sorted(report.updated) == sorted(SAMPLE)
    from arch.data import nasdaq, sp500

    for symbol, source in (("SPX", sp500.load()), ("IXIC", nasdaq.load())):
        cached = cache.read(symbol)
        assert len(cached) == len(source) and cached.close.tolist() == source.Close.tolist()
    from bokeh_sampledata import stocks

    for symbol in ("AAPL", "GOOG", "IBM", "MSFT"):
        cached, source = cache.read(symbol), pd.DataFrame(getattr(stocks, symbol))
        assert cached.date.dt.strftime("%Y-%m-%d").tolist() == source.date.tolist()
        ratio = source.adj_close / source.close                # split-adjusted: the close is the source's adj_close
        np.testing.assert_allclose(cached.close, source.adj_close, rtol=1e-12)
        for column in ("open", "high", "low"):
            np.testing.assert_allclose(cached[column], source[column] * ratio, rtol=1e-12)
        assert cached.volume.tolist() == source.volume.tolist()
    goog = cache.read("GOOG")
    assert goog.dtypes["close"] == "float64" and goog.date.is_monotonic_increasing
    prov = cache.provenance("GOOG")
    assert prov.provider == "sample" and prov.source == "sample:GOOG" and prov.fetched_at
    assert not list(tmp_path.rglob("*.tmp*"))


def test_sample_stocks_have_no_split_jumps(tmp_path):
    frame = load_candles(load_universe("sample"), "sample", tmp_path).set_index("date")
    # 2:1 splits: unadjusted, the close halves overnight on each of these days
    for symbol, day in (("AAPL", "2000-06-21"), ("AAPL", "2005-02-28"), ("MSFT", "2003-02-18")):
        returns = np.log(frame[frame.symbol == symbol].close).diff()
        assert abs(returns[pd.Timestamp(day)]) < 0.1


def test_sample_unknown_ticker_lists_the_sample_symbols():
    message = f"sample: unknown ticker 'NOPE' (the sample universe has {', '.join(SAMPLE)})"
    with pytest.raises(MarketGPTError, match=re.escape(message)):
        SampleProvider().fetch(asset("NOPE"), None, None)


def runtime_requirements(name: str) -> dict[str, importlib.metadata.Distribution]:
    """Every distribution `name` needs at run time, its extras left out, found in this environment."""
    found, todo = {}, [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in found:
            continue
        found[key] = dist = importlib.metadata.distribution(key)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def test_no_run_time_dependency_is_copyleft_or_source_available():
    # an MIT package must not need a copyleft (AGPL/GPL) or source-available package to run
    forbidden = re.compile(r"\bA?GPL|GNU (Affero )?General Public|SSPL|Server Side Public|BUSL|Business Source|"
                           r"Commons Clause|Elastic License")
    dists = runtime_requirements("marketgpt")
    assert {"arch", "bokeh-sampledata"} <= set(dists) and "backtesting" not in dists
    for key, dist in dists.items():
        meta = dist.metadata
        licence = meta.get("License") or ""
        terms = [meta.get("License-Expression") or "", *(meta.get_all("Classifier") or [])]
        terms += [licence] if "\n" not in licence.strip() else []   # a multi-line field is the whole text
        assert not [t for t in terms if forbidden.search(t)], f"{key}: {terms}"


def test_second_download_fetches_only_missing_dates(tmp_path):
    calls = []
    provider = YFinanceProvider(recorded_yfinance(calls))
    spy = pd.DataFrame([asset("SPY")])
    cache = CandleCache(tmp_path, "yfinance")
    download_universe(spy, provider, cache, start="2018-01-01", end="2018-01-12")
    first = cache.read("SPY")
    report = download_universe(spy, provider, cache, start="2018-01-01", end="2018-01-31")
    assert calls[1][1] == "2018-01-13"                      # only after the cached range
    merged = cache.read("SPY")
    assert len(merged) == len(first) + report.updated["SPY"] and merged.date.is_unique
    assert merged.iloc[: len(first)].equals(first)
    report = download_universe(spy, provider, cache, start="2018-01-01", end="2018-01-31")
    assert report.unchanged == ["SPY"] and len(calls) == 2   # nothing missing: no request at all


def test_load_candles_requires_a_download_for_network_providers(tmp_path):
    with pytest.raises(MarketGPTError, match="not cached under .*`marketgpt data download"):
        load_candles(load_universe("c"), "ccxt", tmp_path)


def test_sample_universe_loads_offline(tmp_path):
    universe = load_universe("sample")
    assert set(universe.category) == {"indices", "us_stocks"}
    frame = load_candles(universe, "sample", tmp_path)
    assert set(frame.symbol) == set(SAMPLE) and len(frame) == 22020
    assert (frame.high >= frame[["open", "close"]].max(axis=1)).all()


def test_files_provider_on_shared_data(shared_data, tmp_path):
    manifest = pd.read_csv(shared_data / "manifest.csv")
    daily = manifest[manifest.category != "intraday"].groupby("category").head(3)
    universe = pd.DataFrame({"symbol": daily.symbol, "category": daily.category, "name": "",
                             "yfinance": daily.symbol, "ccxt": ""})
    cache = CandleCache(tmp_path, "files")
    report = download_universe(universe, FilesProvider(shared_data), cache)
    assert not report.failed
    for row in daily.itertuples():
        candles = cache.read(row.symbol)
        assert len(candles) == row.rows
        assert candles.date.min().strftime("%Y-%m-%d") == row.first_date
        assert candles.date.max() < pd.Timestamp("2022-01-01")


def test_files_provider_finds_crypto_by_yahoo_symbol(shared_data):
    fetched = FilesProvider(shared_data).fetch(asset("BTC", "crypto", "BTC-USD", "BTC/USDT"), None, None)
    assert fetched.source.endswith("crypto/BTC-USD.csv.gz") and len(fetched.frame) > 2000
