"""Time split: global cutoffs, each candle in exactly one split, shares within 1% of the ratios."""

import numpy as np
import pandas as pd
import pytest

from marketgpt.data import time_split
from marketgpt.data.providers import FilesProvider
from marketgpt.errors import MarketGPTError


def ragged_universe(seed=0):
    """Assets that start and end on different dates, as real universes do."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(30):
        start = pd.Timestamp("2005-01-03") + pd.Timedelta(days=int(rng.integers(0, 3000)))
        dates = pd.bdate_range(start, periods=int(rng.integers(300, 3000)))
        frames.append(pd.DataFrame({"symbol": f"S{i}", "date": dates}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("ratios", [(0.70, 0.15), (0.8, 0.1), (0.5, 0.25)])
def test_split_shares_and_disjoint_dates(ratios):
    candles = ragged_universe()
    split = time_split(candles, *ratios)
    labels = split.assign(candles.date)
    expected = (ratios[0], ratios[1], 1 - sum(ratios))
    for k, share in enumerate(expected):
        assert abs((labels == k).mean() - share) < 0.01
    by_date = pd.Series(labels).groupby(candles.date.to_numpy()).nunique()
    assert (by_date == 1).all()                      # no date in two splits
    train_dates = candles.date[labels == 0]
    assert train_dates.max() <= split.train_end < candles.date[labels == 1].min()
    assert candles.date[labels == 1].max() <= split.val_end < candles.date[labels == 2].min()
    assert sum(split.counts.values()) == len(candles)


def test_split_is_deterministic_and_serializable():
    candles = ragged_universe(1)
    a, b = time_split(candles), time_split(candles.sample(frac=1, random_state=3))
    assert a == b and a.to_dict()["train_end"] == a.train_end.strftime("%Y-%m-%d")


def test_split_needs_three_dates():
    with pytest.raises(MarketGPTError, match="at least 3 dates"):
        time_split(pd.DataFrame({"symbol": "A", "date": pd.to_datetime(["2020-01-01", "2020-01-02"])}))


def test_split_on_shared_data(shared_data):
    frames = [FilesProvider(shared_data).fetch(pd.Series({"symbol": p.name.removesuffix(".csv.gz"), "category": p.parent.name,
                                                          "yfinance": ""}), None, None).frame.assign(symbol=p.name)
              for p in sorted(shared_data.glob("*/*.csv.gz")) if p.parent.name != "intraday"]
    candles = pd.concat(frames)
    candles["date"] = pd.to_datetime(candles.date)
    split = time_split(candles, 0.7, 0.15)
    for name, share in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert abs(split.shares[name] - share) < 0.01
