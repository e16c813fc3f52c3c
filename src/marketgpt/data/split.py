"""Time split with global date cutoffs: every candle (as a prediction target) falls in exactly one split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import SHARE, check_number
from ..errors import MarketGPTError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TimeSplit:
    """train: date <= train_end; val: train_end < date <= val_end; test: date > val_end."""

    train_end: pd.Timestamp
    val_end: pd.Timestamp
    counts: dict[str, int]

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {k: v / total for k, v in self.counts.items()}

    def assign(self, dates) -> np.ndarray:
        """Split index per date: 0 train, 1 val, 2 test."""
        dates = pd.DatetimeIndex(dates)
        return (dates > self.train_end).astype(np.int8) + (dates > self.val_end).astype(np.int8)

    def to_dict(self) -> dict:
        return {"train_end": self.train_end.strftime("%Y-%m-%d"), "val_end": self.val_end.strftime("%Y-%m-%d"),
                "counts": self.counts, "shares": {k: round(v, 6) for k, v in self.shares.items()}}


def time_split(candles: pd.DataFrame, train_ratio: float = 0.70, val_ratio: float = 0.15) -> TimeSplit:
    """Choose the cutoff dates so that the shares of candles across the whole universe are closest to the ratios.

    Each ratio is a share in (0, 1) and together they leave a test share: a train ratio of 1.5 would fit the
    tokenizer on validation and test candles."""
    for name, ratio in (("train_ratio", train_ratio), ("val_ratio", val_ratio)):
        check_number(ratio, SHARE, f"time split: {name}")
    if train_ratio + val_ratio >= 1:
        raise MarketGPTError(f"time split: train_ratio + val_ratio must be below 1 (the rest is the test split), "
                             f"got {train_ratio} + {val_ratio}")
    if not isinstance(candles, pd.DataFrame) or "date" not in candles.columns:
        raise MarketGPTError("time split: expected a candle frame with a 'date' column")
    if candles.empty:
        raise MarketGPTError("time split: no candles")
    per_date = candles.groupby("date").size().sort_index()
    if len(per_date) < 3:
        raise MarketGPTError(f"time split: need candles on at least 3 dates, got {len(per_date)}")
    share = per_date.cumsum().to_numpy() / len(candles)
    dates = per_date.index
    i = int(np.argmin(np.abs(share - train_ratio)))
    i = min(i, len(dates) - 3)
    j = int(np.argmin(np.abs(share - (train_ratio + val_ratio))))
    j = min(max(j, i + 1), len(dates) - 2)
    split = TimeSplit(dates[i], dates[j], {})
    labels = split.assign(candles.date)
    counts = {name: int((labels == k).sum()) for k, name in enumerate(SPLITS)}
    return TimeSplit(dates[i], dates[j], counts)
