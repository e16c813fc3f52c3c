"""Market data: universes, providers, validation, the Parquet cache and the time split."""

from __future__ import annotations

import shlex

import pandas as pd

from ..errors import MarketGPTError
from .cache import CandleCache, Provenance, default_data_dir
from .download import DownloadReport, download_universe
from .info import format_info, universe_info
from .providers import PROVIDERS, get_provider
from .split import SPLITS, TimeSplit, time_split
from .universe import CASES, load_universe
from .validate import validate_candles

LONG_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume"]


def load_candles(universe: pd.DataFrame, provider: str, data_dir=None, fetch_offline: bool = True,
                 policy: str = "fail") -> pd.DataFrame:
    """The universe's cached candles as one long frame sorted by symbol then date.

    Offline providers (sample, files) fill a missing cache on the spot; network providers must have been
    downloaded first with `marketgpt data download`.
    """
    cache = CandleCache(data_dir, provider)
    missing = [s for s in universe.symbol if not cache.exists(s)]
    source = get_provider(provider) if missing else None
    if missing and fetch_offline and source.offline:
        report = download_universe(universe[universe.symbol.isin(missing)], source, cache, policy=policy)
        if report.failed:
            raise MarketGPTError(next(iter(report.failed.values())))
    elif missing:
        command = download_command(universe.attrs.get("universe", "UNIVERSE.csv"), provider, data_dir)
        raise MarketGPTError(
            f"{len(missing)} asset(s) not cached under {cache.root} (first: {missing[0]}); run `{command}` first")
    frames = [cache.read(s).assign(symbol=s) for s in universe.symbol]
    return pd.concat(frames, ignore_index=True)[LONG_COLUMNS]


def download_command(universe: str, provider: str, data_dir=None) -> str:
    """The `marketgpt data download` command line that fills the cache for this universe, provider and folder."""
    words = ["marketgpt", "data", "download", "--universe", universe, "--provider", provider]
    if data_dir:
        words += ["--data-dir", str(data_dir)]
    return shlex.join(words)


__all__ = [
    "CASES", "LONG_COLUMNS", "PROVIDERS", "SPLITS", "CandleCache", "DownloadReport", "MarketGPTError", "Provenance",
    "TimeSplit", "default_data_dir", "download_command", "download_universe", "format_info", "get_provider",
    "load_candles", "load_universe", "time_split", "universe_info", "validate_candles",
]
