"""Candle providers: each returns raw daily candles of one asset (date, open, high, low, close, volume).

Validation and caching happen downstream; a provider only fetches and names its source.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import re
import time
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import MarketGPTError
from .validate import check_date_format, normalize_columns

DAY_MS = 86_400_000
DEFAULT_EXCHANGE = "binance"
INSTALL = "pip install 'marketgpt[providers]'"


class NoCandles(MarketGPTError):
    """The provider has no candles in the range: for a cached asset that means nothing new, not a failure."""


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """`Class: message` on one line and shortened: an exchange error can carry a whole HTML page."""
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def optional_import(package: str, provider: str):
    """Import a provider's optional package, or say which one is missing and how to install it."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise MarketGPTError(f"{provider} provider: package '{exc.name}' is not installed; {INSTALL}") from None


@dataclass
class Fetched:
    """Raw candles of one asset and where they came from (used in error messages and provenance)."""

    frame: pd.DataFrame   # for files, the index holds each row's line number in the file
    source: str
    row_label: str = "row"
    date_format: str = ""  # the format of the date column's strings, when given by the user


class Provider:
    name = "provider"
    offline = False

    def prepare(self) -> None:
        """Fail once, before the first asset, when the provider cannot run at all (missing package)."""

    def fetch(self, asset: pd.Series, start: str | None, end: str | None) -> Fetched:
        raise NotImplementedError

    def provider_symbol(self, asset: pd.Series) -> str:
        return asset.symbol

    def stamp(self, asset: pd.Series) -> dict:
        """What identifies the source's current content, kept in the cache's provenance, so that an edited source
        is read again; {} when the provider cannot tell (a network source is only ever extended)."""
        return {}


class SampleProvider(Provider):
    """Real daily series shipped inside permissively licensed registry packages, so the pipeline runs offline.

    SPX and IXIC: S&P 500 and NASDAQ Composite 1999-2018 (package `arch`, NCSA licence).
    AAPL, GOOG, IBM, MSFT: Quandl WIKI stock candles 2000-2013 (GOOG from its 2004 listing), which Quandl
    put in the public domain (package `bokeh-sampledata`, BSD-3-Clause). Their open/high/low/close are as
    traded, so a split reads as a crash (AAPL halves in 2000 and 2005, MSFT in 2003): each day's four
    prices are scaled by that day's adj_close / close, which removes the split jumps (and dividend
    drops) without changing any candle's shape. Volume stays the number of shares traded.
    """

    name = "sample"
    offline = True
    INDICES = {"SPX": "sp500", "IXIC": "nasdaq"}
    STOCKS = ("AAPL", "GOOG", "IBM", "MSFT")

    @classmethod
    def _load(cls, symbol: str) -> pd.DataFrame:
        if symbol in cls.INDICES:
            return importlib.import_module(f"arch.data.{cls.INDICES[symbol]}").load()
        if symbol in cls.STOCKS:
            from bokeh_sampledata import stocks

            frame = pd.DataFrame(getattr(stocks, symbol)).set_index("date")
            prices = ["open", "high", "low", "close"]
            frame[prices] = frame[prices].mul(frame.pop("adj_close") / frame["close"], axis=0)
            return frame
        raise MarketGPTError(f"sample: unknown ticker '{symbol}' "
                             f"(the sample universe has {', '.join([*cls.INDICES, *cls.STOCKS])})")

    def fetch(self, asset, start, end):
        raw = self._load(asset.symbol).drop(columns=["Adj Close"], errors="ignore")
        return Fetched(raw.rename_axis("date").reset_index(), f"sample:{asset.symbol}")


class FilesProvider(Provider):
    """A folder of per-symbol CSV or Parquet files: `<root>/<category>/<SYMBOL>.csv.gz` or `<root>/<SYMBOL>.csv`.

    The file may also be named by the asset's Yahoo symbol (`crypto/BTC-USD.csv.gz` for BTC).
    """

    name = "files"
    offline = True
    SUFFIXES = (".csv.gz", ".csv", ".parquet")

    def __init__(self, root: str | Path, date_format: str = ""):
        self.root = Path(root)
        self.date_format = check_date_format(date_format) if date_format else ""
        if not self.root.is_dir():
            raise MarketGPTError(f"files provider: folder {self.root} does not exist")

    def path_of(self, asset: pd.Series) -> Path:
        names = dict.fromkeys([asset.symbol, asset.get("yfinance") or asset.symbol])
        for folder in (self.root / str(asset.category), self.root):
            for name in names:
                for suffix in self.SUFFIXES:
                    path = folder / f"{name}{suffix}"
                    if path.exists():
                        return path
        raise MarketGPTError(f"files provider: no file for asset {asset.symbol} under {self.root} "
                             f"(looked for {asset.category}/{asset.symbol}.csv[.gz|.parquet] and {asset.symbol}.*)")

    def stamp(self, asset):
        try:
            path = self.path_of(asset)
        except MarketGPTError:   # no file (any more): fetch says so; a cached copy stays usable meanwhile
            return {}
        stat = path.stat()
        return {"file": path.name, "size": stat.st_size,
                "modified": datetime.fromtimestamp(stat.st_mtime).isoformat(timespec="seconds"),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    def fetch(self, asset, start, end):
        path = self.path_of(asset)
        return Fetched(normalize_columns(read_candle_file(path), str(path)), str(path), "line", self.date_format)


def read_candle_file(path: Path) -> pd.DataFrame:
    """Read a CSV (optionally gzip, as strings, indexed by line number) or a Parquet file (indexed by row).

    The first bytes decide what the file is, so a file whose name says otherwise gets a message, not a decoding
    error from the middle of pandas."""
    gzipped = path.name.endswith(".gz")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
        magic = head[:4]
        if magic.startswith(b"\x1f\x8b") != gzipped or (magic == b"PAR1") != (path.suffix == ".parquet"):
            kind = "gzip-compressed" if magic.startswith(b"\x1f\x8b") else "Parquet" if magic == b"PAR1" else "plain text"
            base = next((path.name[:-len(x)] for x in FilesProvider.SUFFIXES if path.name.endswith(x)), path.stem)
            raise MarketGPTError(f"{path}: the file is {kind} but named {path.name[len(base):] or 'without a suffix'}; "
                                 f"rename it to {base}{SUFFIX_OF[kind]}")
        if b"\0" in head and not gzipped and path.suffix != ".parquet":
            raise MarketGPTError(f"{path}: binary data, not a text CSV; expected UTF-8 text, a .csv.gz or a "
                                 f".parquet file")
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path).reset_index(drop=True)
            frame.index += 1
            return frame
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.ParserError as exc:
        raise MarketGPTError(f"{path}: corrupt CSV: {str(exc).strip()}") from None
    except pd.errors.EmptyDataError:
        raise MarketGPTError(f"{path}: the file is empty") from None
    except UnicodeDecodeError as exc:
        raise MarketGPTError(f"{path}: not a text CSV (undecodable byte at position {exc.start}); expected UTF-8 "
                             f"text, a .csv.gz or a .parquet file") from None
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise MarketGPTError(f"{path}: unreadable file ({describe_error(exc)})") from None
    frame.index += 2
    return frame[(frame != "").any(axis=1)]


SUFFIX_OF = {"gzip-compressed": ".csv.gz", "Parquet": ".parquet", "plain text": ".csv"}


NETWORK_ERROR = re.compile(r"resolve host|DNSError|ConnectionError|ConnectError|timed out|Timeout|curl: \(\d+\)|"
                           r"Network is unreachable|Failed to connect", re.IGNORECASE)


@contextlib.contextmanager
def logged_errors(name: str):
    """The error messages a library logs while the block runs (yfinance reports why a download is empty only in its
    log), kept from the terminal: the caller puts them in its own one-line message."""
    errors: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            errors.append(record.getMessage())

    logger = logging.getLogger(name)
    handler, propagate = Keep(logging.ERROR), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield errors
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class YFinanceProvider(Provider):
    """Daily candles from Yahoo Finance through `yfinance` (stocks, ETFs, futures, FX, crypto-USD)."""

    name = "yfinance"

    def __init__(self, download: Callable | None = None):
        self._download = download

    def provider_symbol(self, asset):
        return asset.yfinance or asset.symbol

    def prepare(self):
        if self._download is None:
            self._download = optional_import("yfinance", self.name).download

    def fetch(self, asset, start, end):
        ticker = self.provider_symbol(asset)
        self.prepare()
        end_exclusive = (pd.Timestamp(end) + pd.Timedelta(days=1)).strftime("%Y-%m-%d") if end else None
        with logged_errors("yfinance") as errors:
            raw = self._download(ticker, start=start or "1990-01-01", end=end_exclusive, interval="1d",
                                 auto_adjust=False, actions=False, progress=False)
        if raw is None or len(raw) == 0:
            said = " ".join(" ".join(errors).split())
            network = NETWORK_ERROR.search(said)
            if network:   # not NoCandles: a cached asset must not pass for up to date
                raise MarketGPTError(f"yfinance: cannot reach Yahoo Finance for {asset.symbol} (ticker {ticker}): "
                                     f"{said[network.start():].split(' See ')[0][:200]}; check the network connection")
            raise NoCandles(f"yfinance: no data for {asset.symbol} (ticker {ticker}) between {start or 'the start'} "
                            f"and {end or 'today'}: unknown ticker, delisted, or no candles in that range"
                            + (f" (yfinance: {said[:300]})" if said else ""))
        if isinstance(raw.columns, pd.MultiIndex):
            level = 0 if "Close" in raw.columns.get_level_values(0) else 1
            raw = raw.copy()
            raw.columns = raw.columns.get_level_values(level)
        frame = raw.drop(columns=["Adj Close"], errors="ignore").rename_axis("date").reset_index()
        return Fetched(frame, f"yfinance:{ticker}")


class CCXTProvider(Provider):
    """Daily klines from an exchange through `ccxt`, paginated with since/limit, paced by the exchange's rate limit.

    The current day's kline is still forming and is left out.
    """

    name = "ccxt"

    def __init__(self, exchange_id: str = DEFAULT_EXCHANGE, exchange=None, limit: int = 1000,
                 sleep: Callable[[float], None] = time.sleep, max_retries: int = 5,
                 now: Callable[[], float] = time.time):
        self.exchange_id = exchange_id
        self._exchange = exchange
        self.limit = limit
        self.sleep = sleep
        self.max_retries = max_retries
        self.now = now

    def prepare(self):
        if self._exchange is None:
            ccxt = optional_import("ccxt", self.name)
            if self.exchange_id not in ccxt.exchanges:
                raise MarketGPTError(f"ccxt: unknown exchange '{self.exchange_id}' (e.g. binance, kraken, coinbase)")
            self._exchange = getattr(ccxt, self.exchange_id)({"enableRateLimit": False})

    @property
    def exchange(self):
        self.prepare()
        return self._exchange

    def provider_symbol(self, asset):
        if not asset.ccxt:
            raise MarketGPTError(f"ccxt: asset {asset.symbol} has no ccxt market in the universe (column 'ccxt')")
        return asset.ccxt

    def _page(self, market: str, since: int) -> list:
        """One page of klines; network errors (rate limits included) are retried with a doubling pause."""
        ccxt = optional_import("ccxt", self.name)
        pause = self.exchange.rateLimit / 1000
        for attempt in range(self.max_retries + 1):
            try:
                return self.exchange.fetch_ohlcv(market, "1d", since=since, limit=self.limit)
            except ccxt.NetworkError as exc:
                if attempt == self.max_retries:
                    raise MarketGPTError(f"ccxt {self.exchange_id} ({market}): {describe_error(exc)} "
                                         f"(after {self.max_retries} retries)") from None
                pause *= 2
                self.sleep(pause)
            except ccxt.BadSymbol:
                raise MarketGPTError(f"ccxt {self.exchange_id}: unknown market '{market}'") from None
            except ccxt.BaseError as exc:
                raise MarketGPTError(f"ccxt {self.exchange_id} ({market}): {describe_error(exc)}") from None
        return []

    def fetch(self, asset, start, end):
        market = self.provider_symbol(asset)
        since = int(pd.Timestamp(start or "2010-01-01").timestamp() * 1000)
        stop = int(pd.Timestamp(end).timestamp() * 1000) if end else None
        rows: list = []
        while True:
            page = self._page(market, since)
            rows.extend(page)
            if not page or len(page) < self.limit or (stop is not None and page[-1][0] >= stop):
                break
            since = page[-1][0] + DAY_MS
            self.sleep(self.exchange.rateLimit / 1000)
        finished = int(self.now() * 1000) - DAY_MS
        rows = [row for row in rows if row[0] <= finished]
        if not rows:
            raise NoCandles(f"ccxt {self.exchange_id}: no candles for {asset.symbol} ({market}) from {start or '2010-01-01'}")
        frame = pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])
        frame.insert(0, "date", pd.to_datetime(frame.pop("timestamp"), unit="ms").dt.strftime("%Y-%m-%d"))
        return Fetched(frame, f"ccxt:{self.exchange_id}:{market}")


PROVIDERS = ("sample", "files", "yfinance", "ccxt")


def check_provider(name: str) -> str:
    """A provider name whose kind exists (nothing is opened: a cache may serve without its source folder)."""
    if not isinstance(name, str) or name.partition(":")[0] not in PROVIDERS:
        raise MarketGPTError(f"unknown provider '{name}'; choose one of {', '.join(PROVIDERS)} (files:PATH, "
                             f"ccxt:EXCHANGE)")
    return name


def get_provider(name: str, root: str | Path | None = None, date_format: str = "") -> Provider:
    """Build a provider by name; `files` takes the folder as `files:PATH` or `root`, and the format of its dates
    when they cannot be told apart (day/month or month/day)."""
    kind, _, arg = check_provider(name).partition(":")
    if date_format and kind != "files":
        raise MarketGPTError(f"--date-format is for the files provider; provider {name} gives dates, not text")
    if kind == "sample":
        return SampleProvider()
    if kind == "files":
        if not (arg or root):
            raise MarketGPTError("files provider needs a folder: --provider files:PATH")
        return FilesProvider(arg or root, date_format)
    if kind == "yfinance":
        return YFinanceProvider()
    return CCXTProvider(arg or DEFAULT_EXCHANGE)   # the last kind check_provider lets through
