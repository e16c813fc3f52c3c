"""Windows: every target row of a split is scored exactly once, inside one asset, with past-only inputs."""

import numpy as np
import pytest

from marketgpt.dataset import TokenStore, gather, make_windows
from marketgpt.errors import MarketGPTError


def store_of(lengths, train=0.7, val=0.15, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    asset = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    day = np.concatenate([np.arange(k) + rng.integers(0, 50) for k in lengths])
    cut1, cut2 = np.quantile(day, [train, train + val])
    split = (day > cut1).astype(np.int8) + (day > cut2).astype(np.int8)
    tokens = np.stack([np.arange(n) % 60000, asset], axis=1).astype(np.uint16)
    return TokenStore(tokens, asset, split, day.astype("datetime64[D]"), rng.normal(0, 0.01, n), [f"A{i}" for i in range(len(lengths))],
                      ["crypto"] * len(lengths), ["crypto"])


@pytest.mark.parametrize("T", [4, 16, 33])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_target_row_scored_once(T, split):
    store = store_of([300, 120, 57, 500])
    windows = make_windows(store, split, T)
    x, y, mask, asset = gather(store, windows, T)
    target_rows = windows[:, :1] + np.arange(1, T + 1)
    scored = target_rows[mask]
    k = ["train", "val", "test"].index(split)
    first = np.flatnonzero(np.diff(store.asset, prepend=-1))
    expected = np.setdiff1d(np.flatnonzero(store.split == k), first)
    long_enough = np.isin(store.asset[expected], [a for a, n in enumerate([300, 120, 57, 500]) if n >= T + 1])
    assert np.array_equal(np.sort(scored), expected[long_enough])
    assert (store.asset[windows[:, 0]] == windows[:, 3]).all()
    assert (store.asset[target_rows.max(axis=1)] == windows[:, 3]).all()      # a window never crosses assets
    assert np.array_equal(y[:, :-1], x[:, 1:])                                 # targets are the next rows
    assert (y[..., 1] == asset[:, None]).all()


def test_store_round_trip_memory_mapped(tmp_path):
    store = store_of([40, 60])
    store.save(tmp_path / "tokens")
    loaded = TokenStore.load(tmp_path / "tokens")
    assert isinstance(loaded.tokens, np.memmap)
    assert np.array_equal(loaded.tokens, store.tokens) and np.array_equal(loaded.dates, store.dates)
    assert loaded.asset_rows() == {"A0": (0, 40), "A1": (40, 100)}


def test_no_windows_is_a_clear_error():
    with pytest.raises(MarketGPTError, match="no val windows"):
        make_windows(store_of([10, 12]), "val", 32)
