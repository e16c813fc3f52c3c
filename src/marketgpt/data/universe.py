"""Universes: the assets of a case, as CSV files shipped with the package or given by the user."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pandas as pd

from ..config import NAME_PATTERN
from ..errors import MarketGPTError
from .providers import describe_error

CASES = ("sample", "a", "b", "c")
CATEGORIES = ("us_stocks", "eu_stocks", "emerging", "commodities", "crypto", "indices", "fx")
REQUIRED = ("symbol", "category")
CCXT_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]+$")   # BTC/USDT, BTC/USDT:USDT


def universe_path(case_or_path: str | Path) -> Path:
    """Resolve a case name (`a`, `case_a`, `sample`) or a path to a universe CSV."""
    if not isinstance(case_or_path, (str, Path)):
        raise MarketGPTError(f"universe: expected a case name or a CSV path, got {type(case_or_path).__name__} "
                             f"{case_or_path!r}")
    if not str(case_or_path).strip():
        raise MarketGPTError(f"universe: no universe given; choose one of {', '.join(CASES)} or a CSV path")
    case_or_path = str(case_or_path)
    name = case_or_path.lower().removeprefix("case_")
    if name in CASES:
        return Path(str(resources.files("marketgpt") / "universes" / f"{'sample' if name == 'sample' else 'case_' + name}.csv"))
    path = Path(case_or_path)
    if not path.exists():
        raise MarketGPTError(f"unknown universe '{case_or_path}': not one of {', '.join(CASES)} and no such file")
    return path


def load_universe(case_or_path: str | Path) -> pd.DataFrame:
    """Read and check a universe CSV: one row per asset with at least `symbol` and `category`.

    `attrs["universe"]` keeps the name it was loaded by, so messages can print the command to run.
    """
    path = universe_path(case_or_path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise MarketGPTError(f"{path}: the universe file is empty; expected a header symbol,category") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise MarketGPTError(f"{path}: unreadable universe CSV ({describe_error(exc)})") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise MarketGPTError(f"{path}: missing column(s) {', '.join(missing)}; expected symbol,category[,name,yfinance,ccxt]")
    for column in ("name", "yfinance", "ccxt"):
        if column not in frame.columns:
            frame[column] = ""
    frame = frame.apply(lambda col: col.str.strip())
    for i, row in enumerate(frame.itertuples(index=False), start=2):
        # symbol and yfinance name cache files and the files provider's file names: one path component each
        for column in ("symbol", "yfinance"):
            value = getattr(row, column)
            if (value or column == "symbol") and not NAME_PATTERN.match(value):
                raise MarketGPTError(f"{path}: line {i}: invalid {column} '{value}' (letters, digits and . _ - ^ =, "
                                     f"no path separators)")
        if row.ccxt and not CCXT_PATTERN.match(row.ccxt):
            raise MarketGPTError(f"{path}: line {i}: invalid ccxt market '{row.ccxt}' (e.g. BTC/USDT)")
        if not row.category:
            raise MarketGPTError(f"{path}: line {i}: asset {row.symbol} has no category")
        if row.category not in CATEGORIES:
            raise MarketGPTError(f"{path}: line {i}: asset {row.symbol} has unknown category '{row.category}' (known: {', '.join(CATEGORIES)})")
    duplicated = frame.symbol[frame.symbol.duplicated()]
    if len(duplicated):
        raise MarketGPTError(f"{path}: duplicate symbol '{duplicated.iloc[0]}'")
    if frame.empty:
        raise MarketGPTError(f"{path}: the universe has no assets")
    frame.loc[frame.yfinance == "", "yfinance"] = frame.symbol
    frame = frame.reset_index(drop=True)
    frame.attrs["universe"] = case_or_path
    return frame
