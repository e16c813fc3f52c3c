"""Per-candle inputs of the tokenizer's features: price columns, asset boundaries and date order of a long frame,
and the volume feature (a trailing mean of the asset's own past volumes). CandleTokenizer (tokenizer.py) uses them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import MarketGPTError
from .tokenizer_bins import VOLUME_CLIP


def as_float(frame: pd.DataFrame, column: str) -> np.ndarray:
    try:
        return frame[column].to_numpy(dtype=np.float64)
    except KeyError:
        raise MarketGPTError(f"candle frame has no column {column!r} (columns: {list(frame.columns)})") from None


def asset_starts(frame: pd.DataFrame) -> np.ndarray:
    """Bool mask: True at the first row of each asset (frame sorted by symbol then date)."""
    n = len(frame)
    first = np.zeros(n, dtype=bool)
    if n == 0:
        return first
    first[0] = True
    if "symbol" in frame.columns:
        sym = frame["symbol"]
        if isinstance(sym.dtype, pd.CategoricalDtype):
            codes = sym.cat.codes.to_numpy()
        else:
            codes = pd.factorize(sym, sort=False)[0]
        first[1:] = codes[1:] != codes[:-1]
        if int(np.count_nonzero(first)) != int(codes.max()) + 1:
            raise MarketGPTError("candle frame must be sorted by symbol: some symbol's rows are not contiguous")
    return first


def check_date_order(frame: pd.DataFrame, first: np.ndarray) -> None:
    """Each feature pairs a candle with the one before it, so within an asset the dates must rise strictly: a
    descending frame would encode every return reversed, and two candles on one date a return of nothing."""
    if "date" not in frame.columns or len(frame) < 2:
        return
    try:
        dates = pd.to_datetime(frame["date"], format="ISO8601").to_numpy()
    except (ValueError, TypeError):
        raise MarketGPTError("candle frame: the date column holds values that are not dates") from None
    bad = np.flatnonzero(~first[1:] & ~(dates[1:] > dates[:-1]))
    if bad.size:
        i = int(bad[0]) + 1
        day, before = (pd.Timestamp(d).strftime("%Y-%m-%d") for d in (dates[i], dates[i - 1]))
        what = "the same date as" if day == before else "earlier than"
        raise MarketGPTError(f"candle frame row {i}: date {day} is {what} row {i - 1} ({before}); sort each asset by "
                             f"date and drop duplicate dates first")


def volume_feature(frame: pd.DataFrame, first: np.ndarray, window: int) -> np.ndarray:
    """The volume feature of every frame row (see CandleTokenizer): ln(V / trailing mean of up to `window` previous
    volumes of the asset), 0 where that mean is 0, clipped to +-VOLUME_CLIP."""
    v = as_float(frame, "volume")
    if not np.isfinite(v).all() or (v < 0).any():
        bad = int(np.flatnonzero(~(np.isfinite(v) & (v >= 0)))[0])
        raise MarketGPTError(f"candle frame row {bad}: volume must be finite and >= 0, got {v[bad]}")
    n, w = v.size, window
    pos = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))  # index within the asset
    total = np.zeros(n)
    for lag in range(1, min(w, n - 1) + 1):  # loop over the window, not over candles
        total[lag:] += v[:-lag]  # exact for rows >= w into their asset; the others are redone below
    head = np.flatnonzero(pos < w)  # rows whose window reaches the asset start: w per asset
    total[head] = 0.0
    for lag in range(1, w + 1):  # same order of additions, terms of other assets left out
        ok = pos[head] >= lag
        total[head[ok]] += v[head[ok] - lag]
    count = np.minimum(pos, w).astype(np.float64)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    with np.errstate(divide="ignore"):
        feat = np.log(np.divide(v, mean, out=np.ones(n), where=mean > 0))
    return np.clip(feat, -VOLUME_CLIP, VOLUME_CLIP)
