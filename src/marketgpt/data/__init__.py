"""Market data: universes, providers, validation, the Parquet cache and the time split."""

from __future__ import annotations

import shlex

import pandas as pd

from ..errors import MarketGPTError
from .cache import CandleCache, Provenance, default_data_dir
from .download import DownloadReport, download_universe, source_change
from .info import format_info, universe_info
from .providers import PROVIDERS, check_provider, get_provider
from .split import SPLITS, TimeSplit, time_split
from .universe import CASES, load_universe
from .validate import check_policy, validate_candles

LONG_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume"]


def load_candles(universe: pd.DataFrame, provider: str, data_dir=None, fetch_offline: bool = True,
                 policy: str = "fail") -> pd.DataFrame:
    """The universe's cached candles as one long frame sorted by symbol then date.

    Offline providers (sample, files) fill a missing cache on the spot, and read again a source file that changed
    since it was cached; network providers must have been downloaded first with `marketgpt data download`.
    """
    check_policy(policy)
    cache = CandleCache(data_dir, provider)
    missing = [s for s in universe.symbol if not cache.exists(s)]
    try:
        source = get_provider(provider)
    except MarketGPTError:
        if missing:
            raise
        source = None   # the cache alone serves: the source is needed only to fill it
    if fetch_offline and source is not None and source.offline:
        changed = [a.symbol for a in universe.itertuples(index=False) if cache.exists(a.symbol)
                   and source_change(cache.provenance(a.symbol), source.stamp(pd.Series(a._asdict())))]
        report = download_universe(universe[universe.symbol.isin(missing + changed)], source, cache, policy=policy) \
            if missing or changed else DownloadReport()
        if report.failed:   # every asset that failed, not only the first: the user fixes them in one go
            raise MarketGPTError(f"{len(report.failed)} asset(s) failed: "
                                 + "; ".join(f"{s}: {reason}" for s, reason in report.failed.items()))
    elif missing:
        command = download_command(universe.attrs.get("universe", "UNIVERSE.csv"), provider, data_dir)
        raise MarketGPTError(
            f"{len(missing)} asset(s) not cached under {cache.root} (first: {missing[0]}); run `{command}` first")
    frames = [cache.read(s).assign(symbol=s) for s in universe.symbol]
    return pd.concat(frames, ignore_index=True)[LONG_COLUMNS]


def dropped_rows(universe: pd.DataFrame, provider: str, data_dir=None) -> dict[str, dict[str, int]]:
    """Bad rows left out of each asset's cached candles (on_bad_rows=drop), per rule, as the cache recorded them."""
    cache = CandleCache(data_dir, provider)
    return {s: prov.dropped for s in universe.symbol if (prov := cache.provenance(s)) and prov.dropped}


def download_command(universe: str, provider: str, data_dir=None) -> str:
    """The `marketgpt data download` command line that fills the cache for this universe, provider and folder."""
    option = "--universe" if str(universe).lower().endswith(".csv") else "--case"    # as the README writes them
    words = ["marketgpt", "data", "download", option, str(universe), "--provider", provider]
    if data_dir:
        words += ["--data-dir", str(data_dir)]
    return shlex.join(words)


__all__ = [
    "CASES", "LONG_COLUMNS", "PROVIDERS", "SPLITS", "CandleCache", "DownloadReport", "MarketGPTError", "Provenance",
    "TimeSplit", "default_data_dir", "download_command", "download_universe", "dropped_rows", "format_info",
    "check_provider", "get_provider",
    "load_candles", "load_universe", "time_split", "universe_info", "validate_candles",
]
