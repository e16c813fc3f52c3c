"""Time split with global date cutoffs: every candle (as a prediction target) falls in exactly one split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import RANGES, SHARE, check_number
from ..errors import MarketGPTError

SPLITS = ("train", "val", "test")
EMBARGO = 3   # the split label of targets inside the embargo: no split trains, validates or tests on them


@dataclass(frozen=True)
class TimeSplit:
    """train: date <= train_end; val: train_end + embargo_days < date <= val_end; test: date > val_end.

    The embargo keeps the validation targets (and with them the test targets, later still) at least `embargo_days`
    calendar days away from the last training target, so that what the model learnt from the days just before the
    cut cannot be scored as foresight by a multi-day horizon that overlaps them."""

    train_end: pd.Timestamp
    val_end: pd.Timestamp
    counts: dict[str, int]
    embargo_days: int = 0

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {k: v / total for k, v in self.counts.items()}

    def assign(self, dates) -> np.ndarray:
        """Split index per date: 0 train, 1 val, 2 test, EMBARGO (3) inside the embargo."""
        dates = pd.DatetimeIndex(dates)
        labels = (dates > self.train_end).astype(np.int8) + (dates > self.val_end).astype(np.int8)
        if self.embargo_days:
            gap = (dates > self.train_end) & (dates <= self.train_end + pd.Timedelta(days=self.embargo_days))
            labels[gap & (labels == 1)] = EMBARGO
        return labels

    def period(self, name: str) -> tuple[pd.Timestamp, pd.Timestamp | None]:
        """(after, up to and including) the target dates of the val or test split; None: no end."""
        if name == "test":
            return self.val_end, None
        if name == "val":
            return self.train_end + pd.Timedelta(days=self.embargo_days), self.val_end
        raise MarketGPTError(f"split must be 'val' or 'test', got {name!r}")

    def to_dict(self) -> dict:
        return {"train_end": self.train_end.strftime("%Y-%m-%d"), "val_end": self.val_end.strftime("%Y-%m-%d"),
                "embargo_days": self.embargo_days, "counts": self.counts,
                "shares": {k: round(v, 6) for k, v in self.shares.items()}}


def _counted(candles: pd.DataFrame, train_end, val_end, embargo_days: int) -> TimeSplit:
    check_number(embargo_days, RANGES["data.embargo_days"], "time split: embargo_days")
    labels = TimeSplit(train_end, val_end, {}, embargo_days).assign(candles.date)
    counts = {name: int((labels == k).sum()) for k, name in enumerate(SPLITS)}
    if embargo_days:
        counts["embargo"] = int((labels == EMBARGO).sum())
    return TimeSplit(train_end, val_end, counts, embargo_days)


def _check_candles(candles) -> None:
    if not isinstance(candles, pd.DataFrame) or "date" not in candles.columns:
        raise MarketGPTError("time split: expected a candle frame with a 'date' column")
    if candles.empty:
        raise MarketGPTError("time split: no candles")


def dated_split(candles: pd.DataFrame, train_end: str, val_end: str, embargo_days: int = 0) -> TimeSplit:
    """A split at given cutoff dates (a walk-forward fold's), refused when a split would be empty."""
    _check_candles(candles)
    split = _counted(candles, pd.Timestamp(train_end), pd.Timestamp(val_end), int(embargo_days))
    for name in ("train", "val"):
        if not split.counts[name]:
            raise MarketGPTError(f"time split: no {name} candles with train_end {train_end}, val_end {val_end} and "
                                 f"an embargo of {embargo_days} days (candles {candles.date.min():%Y-%m-%d} to "
                                 f"{candles.date.max():%Y-%m-%d})")
    return split


def time_split(candles: pd.DataFrame, train_ratio: float = 0.70, val_ratio: float = 0.15,
               embargo_days: int = 0) -> TimeSplit:
    """Choose the cutoff dates so that the shares of candles across the whole universe are closest to the ratios.

    Each ratio is a share in (0, 1) and together they leave a test share: a train ratio of 1.5 would fit the
    tokenizer on validation and test candles."""
    for name, ratio in (("train_ratio", train_ratio), ("val_ratio", val_ratio)):
        check_number(ratio, SHARE, f"time split: {name}")
    if train_ratio + val_ratio >= 1:
        raise MarketGPTError(f"time split: train_ratio + val_ratio must be below 1 (the rest is the test split), "
                             f"got {train_ratio} + {val_ratio}")
    _check_candles(candles)
    per_date = candles.groupby("date").size().sort_index()
    if len(per_date) < 3:
        raise MarketGPTError(f"time split: need candles on at least 3 dates, got {len(per_date)}")
    share = per_date.cumsum().to_numpy() / len(candles)
    dates = per_date.index
    i = int(np.argmin(np.abs(share - train_ratio)))
    i = min(i, len(dates) - 3)
    j = int(np.argmin(np.abs(share - (train_ratio + val_ratio))))
    j = min(max(j, i + 1), len(dates) - 2)
    return _counted(candles, dates[i], dates[j], int(embargo_days))
