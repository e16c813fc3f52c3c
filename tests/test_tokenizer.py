"""CandleTokenizer: features, bins, round trips, causality, no leakage, JSON file, real-data accuracy."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import SHARED_DATA

from marketgpt.config import from_dict
from marketgpt.data import time_split
from marketgpt.dataset import prepare_dataset
from marketgpt.errors import MarketGPTError
from marketgpt.tokenizer import CandleTokenizer
from marketgpt.tokenizer_bins import Bucketizer
from marketgpt.tokenizer_inspect import format_inspection, inspect_tokenizer

HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- synthetic candles
def make_asset(rng: np.random.Generator, n: int, symbol: str, start: str = "2010-01-04",
               vol: float = 0.02, flat_from: int | None = None, flat_len: int = 0) -> pd.DataFrame:
    """Random-walk candles with fat tails, gaps, wicks, zero-wick and flat candles, some zero volumes."""
    close_ret = vol * rng.standard_t(3, n) / math.sqrt(3)
    open_ret = 0.3 * vol * rng.standard_t(3, n) / math.sqrt(3) * (rng.random(n) > 0.2)
    close = 100.0 * np.exp(np.cumsum(close_ret))
    prev = np.concatenate([[100.0], close[:-1]])
    open_ = prev * np.exp(open_ret)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)) * (rng.random(n) > 0.1))
    low = np.minimum(open_, close) / np.exp(np.abs(rng.normal(0, vol / 2, n)) * (rng.random(n) > 0.1))
    volume = np.round(rng.lognormal(10, 1, n)) * (rng.random(n) > 0.05)
    if flat_from is not None:
        s = slice(flat_from, flat_from + flat_len)
        p = close[flat_from - 1]
        open_[s] = high[s] = low[s] = close[s] = p
        volume[s] = 0.0
    return pd.DataFrame({"symbol": symbol, "date": pd.bdate_range(start, periods=n),
                         "open": open_, "high": high, "low": low, "close": close, "volume": volume})


def make_frame(seed: int = 0, assets: int = 4, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [make_asset(rng, n, f"S{i}", vol=0.005 * (i + 1) ** 1.5,
                        flat_from=50 if i == 0 else None, flat_len=40) for i in range(assets)]
    return pd.concat(parts, ignore_index=True)


TRAIN = make_frame(0)
TOK = CandleTokenizer(vocab_size=64).fit(TRAIN)
TOK_V = CandleTokenizer(vocab_size=64, use_volume=True, volume_window=5).fit(TRAIN)
TOK_BIG = CandleTokenizer(vocab_size=1024, use_volume=True).fit(make_frame(1, assets=6, n=1500))
TOKENIZERS = [TOK, TOK_V, TOK_BIG]


def features_by_hand(df: pd.DataFrame) -> np.ndarray:
    o, h, l, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    cp = c[:-1]
    o, h, l, c = o[1:], h[1:], l[1:], c[1:]
    return np.stack([np.log(c / cp), np.log(o / cp), np.log(h / np.maximum(o, c)),
                     np.log(np.minimum(o, c) / l)], axis=1)


def assert_valid_candles(ohlc: np.ndarray) -> None:
    o, h, l, c = ohlc.T
    assert np.isfinite(ohlc).all() and (ohlc > 0).all()
    assert (l <= np.minimum(o, c)).all() and (np.minimum(o, c) <= np.maximum(o, c)).all()
    assert (np.maximum(o, c) <= h).all()


def ohlc_frame(ohlc: np.ndarray, prev_close: float, symbol: str = "X") -> pd.DataFrame:
    """A reference candle closing at prev_close, then the decoded candles."""
    rows = np.vstack([[prev_close] * 4, ohlc])
    return pd.DataFrame({"symbol": symbol, "date": pd.bdate_range("2000-01-03", periods=len(rows)),
                         "open": rows[:, 0], "high": rows[:, 1], "low": rows[:, 2], "close": rows[:, 3],
                         "volume": 1.0})


# ---------------------------------------------------------------- basics
def test_channels_and_properties():
    assert CandleTokenizer.VERSION == 1
    t = CandleTokenizer()
    assert (t.vocab_size, t.use_volume, t.volume_window, t.fitted) == (1024, False, 20, False)
    assert t.channels == ["close", "open", "upper", "lower"] and t.num_channels == 4
    assert TOK_V.channels == ["close", "open", "upper", "lower", "volume"] and TOK_V.num_channels == 5
    assert TOK.fitted
    with pytest.raises(MarketGPTError, match="not fitted"):
        t.encode(TRAIN[TRAIN.symbol == "S1"])
    for bad in (1, 0, 2.5, True):
        with pytest.raises(MarketGPTError):
            CandleTokenizer(vocab_size=bad)
    with pytest.raises(MarketGPTError):
        CandleTokenizer(volume_window=0)


def test_first_candle_is_reference_and_features_match_formula():
    df = TRAIN[TRAIN.symbol == "S2"].reset_index(drop=True)
    feats = TOK.features(df)
    assert feats.shape == (len(df) - 1, 4) and feats.dtype == np.float64
    np.testing.assert_array_equal(feats, features_by_hand(df))
    tokens = TOK.encode(df)
    assert tokens.shape == (len(df) - 1, 4) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < TOK.vocab_size
    # row k belongs to frame row k+1: changing the first candle's close changes only row 0's close/open
    df2 = df.copy()
    df2.loc[0, ["open", "high", "low", "close"]] *= 1.5
    t2 = TOK.encode(df2)
    np.testing.assert_array_equal(t2[1:], tokens[1:])
    np.testing.assert_array_equal(t2[0, 2:], tokens[0, 2:])
    # one candle: nothing to encode; the reference alone gives no row
    assert TOK.encode(df.iloc[:1]).shape == (0, 4)
    assert TOK.encode(df.iloc[:0]).shape == (0, 4)


def test_volume_feature_past_only_and_zero_rules():
    t = CandleTokenizer(vocab_size=16, use_volume=True, volume_window=3)
    df = pd.DataFrame({"symbol": "A", "date": pd.bdate_range("2020-01-01", periods=7),
                       "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.0,
                       "volume": [0.0, 0.0, 4.0, 2.0, 6.0, 0.0, 8.0]})
    vol = t.features(df)[:, 4]
    # row 1: mean of [0] = 0 -> 0; row 2: mean [0,0] = 0 -> 0; row 3: mean [0,0,4]; row 4: [0,4,2]
    # row 5: V=0 against mean [4,2,6] -> clipped -10; row 6: mean [2,6,0]
    expect = [0.0, 0.0, math.log(2 / (4 / 3)), math.log(6 / 2), -10.0, math.log(8 / (8 / 3))]
    np.testing.assert_allclose(vol, expect, rtol=1e-12, atol=0)
    assert np.isfinite(vol).all()


def test_bins_are_strict_finite_and_decode_inside_their_bin():
    for tok in TOKENIZERS:
        for ch in tok.channels:
            e, v = tok.bin_edges(ch), tok.bin_values(ch)
            assert e.shape == (tok.vocab_size - 1,) and v.shape == (tok.vocab_size,)
            assert np.isfinite(e).all() and np.isfinite(v).all() and (np.diff(e) > 0).all()
            np.testing.assert_array_equal(np.searchsorted(e, v, side="right"), np.arange(tok.vocab_size))
            if ch in ("upper", "lower"):
                assert (v >= 0).all() and e[0] > 0
            assert tok.bin_counts(ch).sum() > 0
    with pytest.raises(MarketGPTError, match="unknown channel"):
        TOK.bin_edges("volume")


def test_encode_frame_matches_per_asset_encode():
    tokens, rows = TOK_V.encode_frame(TRAIN)
    parts, expect_rows = [], []
    for sym, df in TRAIN.groupby("symbol", sort=False):
        parts.append(TOK_V.encode(df))
        expect_rows.append(df.index.to_numpy()[1:])
    np.testing.assert_array_equal(tokens, np.concatenate(parts))
    np.testing.assert_array_equal(rows, np.concatenate(expect_rows))


def test_frame_errors():
    with pytest.raises(MarketGPTError, match="one asset"):
        TOK.encode(TRAIN)
    bad = TRAIN[TRAIN.symbol == "S1"].copy()
    bad.iloc[5, bad.columns.get_loc("low")] = 0.0
    with pytest.raises(MarketGPTError, match="row 5"):
        TOK.encode(bad)
    shuffled = pd.concat([TRAIN.iloc[:10], TRAIN.iloc[500:510], TRAIN.iloc[10:20]])
    with pytest.raises(MarketGPTError, match="contiguous"):
        TOK.encode_frame(shuffled)
    with pytest.raises(MarketGPTError, match="column"):
        TOK.encode(TRAIN[TRAIN.symbol == "S1"].drop(columns="high"))
    with pytest.raises(MarketGPTError):
        CandleTokenizer(8).fit(TRAIN.iloc[:1])
    with pytest.raises(MarketGPTError):
        TOK.decode(np.full((2, 4), TOK.vocab_size), 1.0)
    with pytest.raises(MarketGPTError):
        TOK.decode(np.zeros((2, 4), dtype=np.int64), -1.0)
    with pytest.raises(MarketGPTError):
        TOK.decode(np.zeros((2, 4), dtype=np.int64), np.ones(3))
    top = np.full((400, 4), TOK.vocab_size - 1)
    with pytest.raises(MarketGPTError, match="float64 range"):  # a path that overflows says so
        TOK.decode(top, 1e300)


# ---------------------------------------------------------------- property tests
def token_arrays(tok: CandleTokenizer, max_rows: int = 40):
    return st.integers(1, max_rows).flatmap(
        lambda m: st.lists(st.lists(st.integers(0, tok.vocab_size - 1), min_size=tok.num_channels,
                                    max_size=tok.num_channels), min_size=m, max_size=m)
    ).map(lambda rows: np.array(rows, dtype=np.int64))


prices = st.floats(1e-4, 1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("tok", TOKENIZERS, ids=["v64", "v64-volume", "v1024-volume"])
@HYP
@given(data=st.data(), p0=prices)
def test_any_tokens_decode_to_valid_candles_and_round_trip(tok, data, p0):
    tokens = data.draw(token_arrays(tok))
    # path decoding: each decoded close is the next candle's previous close
    ohlc = tok.decode(tokens, p0)
    assert ohlc.shape == (len(tokens), 4) and ohlc.dtype == np.float64
    assert_valid_candles(ohlc)
    frame = ohlc_frame(ohlc, p0)
    if tok.use_volume:
        frame["volume"] = 0.0
    again = tok.encode(frame)
    np.testing.assert_array_equal(again[:, :4], tokens[:, :4])
    # feature level, all channels (volume too)
    np.testing.assert_array_equal(tok.encode_features(tok.decode_features(tokens)), tokens)
    # one-step decoding: each row with its own previous close
    pcs = np.array(data.draw(st.lists(prices, min_size=len(tokens), max_size=len(tokens))))
    rows = tok.decode(tokens, pcs)
    assert_valid_candles(rows)
    pairs = pd.concat([ohlc_frame(rows[i:i + 1], pcs[i], symbol=f"A{i:03d}") for i in range(len(rows))],
                      ignore_index=True)
    if tok.use_volume:
        pairs["volume"] = 0.0
    got, idx = tok.encode_frame(pairs)
    np.testing.assert_array_equal(idx, np.arange(1, 2 * len(rows), 2))
    np.testing.assert_array_equal(got[:, :4], tokens[:, :4])


@pytest.mark.parametrize("tok", [TOK, TOK_V], ids=["price", "volume"])
@HYP
@given(seed=st.integers(0, 2**32 - 1), t=st.integers(1, 119), scale=st.floats(0.2, 5.0))
def test_changing_candles_from_t_on_changes_no_earlier_token(tok, seed, t, scale):
    rng = np.random.default_rng(seed)
    df = make_asset(rng, 120, "X")
    before = tok.encode(df)
    changed = df.copy()
    k = len(df) - t
    factor = scale * np.exp(rng.normal(0, 0.3, (k, 1)))
    cols = ["open", "high", "low", "close"]
    changed.loc[t:, cols] = changed.loc[t:, cols].to_numpy() * factor
    changed.loc[t:, "volume"] = rng.lognormal(12, 2, k) * (rng.random(k) > 0.3)
    after = tok.encode(changed)
    # token row j belongs to frame row j + 1; rows before t are rows j < t - 1
    np.testing.assert_array_equal(after[: t - 1], before[: t - 1])


def fitted_through_the_pipeline(frame: pd.DataFrame, folder: Path, volume: bool) -> bytes:
    """Write the frame as per-asset CSV files and run the trainer's data path on them: files provider, cache,
    global time split, tokenizer fit. Returns the tokenizer file's bytes."""
    csv = folder / "csv"
    csv.mkdir(parents=True)
    for symbol, rows in frame.groupby("symbol"):
        rows.drop(columns="symbol").to_csv(csv / f"{symbol}.csv", index=False)
    (folder / "universe.csv").write_text("symbol,category\n" + "".join(f"{s},us_stocks\n" for s in frame.symbol.unique()))
    cfg = from_dict({"model": {"vocab_size": 128, "use_volume": volume},
                     "data": {"universe": str(folder / "universe.csv"), "provider": f"files:{csv}",
                              "data_dir": str(folder / "cache")}})
    prepare_dataset(cfg).tokenizer.save(folder / "tokenizer.json")
    return (folder / "tokenizer.json").read_bytes()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), volume=st.booleans())
def test_changing_val_and_test_candles_leaves_the_fitted_tokenizer_byte_identical(tmp_path_factory, seed, volume):
    rng = np.random.default_rng(seed)
    frame = pd.concat([make_asset(rng, int(rng.integers(150, 400)), f"S{i}", vol=0.01 * (i + 1)) for i in range(3)],
                      ignore_index=True)
    split = time_split(frame)
    later = frame["date"] > split.train_end
    perturbed = frame.copy()
    cols = ["open", "high", "low", "close"]
    perturbed.loc[later, cols] = perturbed.loc[later, cols].to_numpy() * rng.lognormal(0, 0.5, (int(later.sum()), 1))
    perturbed.loc[later, "volume"] = np.round(rng.lognormal(8, 3, int(later.sum())))
    original = fitted_through_the_pipeline(frame, tmp_path_factory.mktemp("original"), volume)
    assert fitted_through_the_pipeline(perturbed, tmp_path_factory.mktemp("perturbed"), volume) == original
    earlier = perturbed.copy()           # the same change one day inside the training period changes the bins
    last_train_row = frame.index[~later][-1]
    earlier.loc[last_train_row, cols] = frame.loc[last_train_row, cols].to_numpy() * 3.0
    assert fitted_through_the_pipeline(earlier, tmp_path_factory.mktemp("earlier"), volume) != original


@HYP
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(10_000, 30_000))
def test_fast_bucketizer_equals_searchsorted(seed, size):
    rng = np.random.default_rng(seed)
    for tok in TOKENIZERS:
        for ch in tok.channels:
            e = tok.bin_edges(ch)
            x = np.concatenate([
                rng.choice(e, size // 4), np.nextafter(rng.choice(e, size // 4), np.inf),
                np.nextafter(rng.choice(e, size // 4), -np.inf),
                rng.standard_t(2, size // 4) * 10.0 ** rng.integers(-9, 1, size // 4),
                [0.0, -0.0, np.inf, -np.inf, 1e300, -1e300, 5e-324, -5e-324],
            ])
            np.testing.assert_array_equal(Bucketizer(e)(x), np.searchsorted(e, x, side="right"))


# ---------------------------------------------------------------- edge cases
def test_constant_price_stretches_and_flat_candles():
    rng = np.random.default_rng(5)
    flat = make_asset(rng, 300, "FLAT", flat_from=10, flat_len=250)  # mostly O=H=L=C=Cp
    tok = CandleTokenizer(256, use_volume=True).fit(pd.concat([flat, make_asset(rng, 300, "B")], ignore_index=True))
    for ch in tok.channels:
        assert (np.diff(tok.bin_edges(ch)) > 0).all()
    tokens = tok.encode(flat)
    stretch = tokens[10:259, :4]  # frame rows 11..259: flat candles with Cp equal to their price
    assert (stretch == stretch[0]).all()
    vol = tok.features(flat)[10:259, 4]  # zero volume: -10 while the window still sees volume, then 0
    assert (vol[:19] == -10.0).all() and (vol[19:] == 0.0).all()  # row 30 on: window all zero
    for k, ch in enumerate(tok.channels[:4]):
        assert tok.bin_values(ch)[stretch[0, k]] == 0.0  # zero features decode exactly to zero
    p = flat["close"].iloc[10]
    ohlc = tok.decode(tokens[10:15], p)
    np.testing.assert_array_equal(ohlc, np.full((5, 4), p))  # flat candles come back exactly
    # a tokenizer fitted on nothing but constant prices still has valid, strictly increasing bins
    const = pd.DataFrame({"symbol": "C", "date": pd.bdate_range("2020-01-01", periods=50),
                          "open": 5.0, "high": 5.0, "low": 5.0, "close": 5.0, "volume": 0.0})
    tc = CandleTokenizer(64, use_volume=True).fit(const)
    for ch in tc.channels:
        e = tc.bin_edges(ch)
        assert e.size == 63 and (np.diff(e) > 0).all() and np.isfinite(tc.bin_values(ch)).all()
    assert_valid_candles(tc.decode(tc.encode(const), 5.0))
    assert tc.bin_values("close")[tc.encode(const)[0, 0]] == 0.0


def test_moves_beyond_the_training_range():
    tok = CandleTokenizer(1024).fit(TRAIN)  # training moves are a few percent
    train_max = TOK.features(TRAIN[TRAIN.symbol == "S3"])[:, 0].max()
    df = pd.DataFrame({"symbol": "X", "date": pd.bdate_range("2020-01-01", periods=6),
                       "open": [10, 10, 100, 10, 0.01, 10], "high": [10, 100, 100, 11, 0.01, 1e6],
                       "low": [10, 10, 10, 0.01, 0.001, 10], "close": [10, 100, 10, 10, 0.01, 1e5]}).astype(
        {"open": float, "high": float, "low": float, "close": float}).assign(volume=1.0)
    feats = tok.features(df)
    tokens = tok.encode(df)
    assert feats[0, 0] > 10 * train_max
    dec = tok.decode_features(tokens)
    # inside the prior's range (|move| <= 5 in log terms) the error stays a few percent of the move
    inside = np.abs(feats) <= 4.8
    assert (np.abs(dec - feats)[inside] <= 0.04 * np.abs(feats)[inside] + 1e-4).all()
    # far beyond it (log(1e5 / 0.01) = 16) the outer bin takes the move, decoding to a finite value
    assert tokens[4, 0] == tok.vocab_size - 1 and np.isfinite(dec).all()
    assert_valid_candles(tok.decode(tokens, 10.0))
    assert_valid_candles(tok.decode(tokens, df["close"].to_numpy()[:-1]))


# ---------------------------------------------------------------- file format
def test_saved_file_is_readable_by_others_as_the_umask_allows(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        TOKENIZERS[0].save(tmp_path / "t.json")
    finally:
        os.umask(old)
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644


def test_save_load_round_trip_is_byte_identical(tmp_path):
    for i, tok in enumerate(TOKENIZERS):
        a, b = tmp_path / f"a{i}.json", tmp_path / f"b{i}.json"
        tok.save(a)
        loaded = CandleTokenizer.load(a)
        loaded.save(b)
        assert a.read_bytes() == b.read_bytes()
        d = json.loads(a.read_text())
        assert d["format"] == "marketgpt-tokenizer" and d["version"] == 1
        for ch in tok.channels:
            np.testing.assert_array_equal(loaded.bin_edges(ch), tok.bin_edges(ch))
            np.testing.assert_array_equal(loaded.bin_values(ch), tok.bin_values(ch))
        df = TRAIN[TRAIN.symbol == "S1"]
        np.testing.assert_array_equal(loaded.encode(df), tok.encode(df))
        assert CandleTokenizer.from_dict(tok.to_dict()).to_dict() == tok.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"a{i}.json" for i in range(3)] + [f"b{i}.json" for i in range(3)])  # no temp files left
    assert b"pickle" not in (tmp_path / "a0.json").read_bytes()


def test_load_errors_name_the_path(tmp_path):
    good = tmp_path / "tok.json"
    TOK.save(good)
    d = json.loads(good.read_text())

    def write(name: str, payload) -> Path:
        p = tmp_path / name
        p.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        return p

    cases = {
        "missing": (tmp_path / "nope.json", "does not exist"),
        "corrupt": (write("corrupt.json", good.read_text()[:100]), "not valid JSON"),
        "format": (write("format.json", {**d, "format": "something-else"}), "format"),
        "version": (write("version.json", {**d, "version": 2}), "version"),
        "lengths": (write("lengths.json", {**d, "bins": {**d["bins"], "open": {
            **d["bins"]["open"], "edges": d["bins"]["open"]["edges"][:-1]}}}), "expected 63 edges"),
        "order": (write("order.json", {**d, "bins": {**d["bins"], "close": {
            **d["bins"]["close"], "edges": d["bins"]["close"]["edges"][::-1]}}}), "strictly increasing"),
        "missing key": (write("key.json", {k: v for k, v in d.items() if k != "bins"}), "malformed"),
        "not object": (write("list.json", [1, 2]), "JSON object"),
    }
    for name, (path, words) in cases.items():
        with pytest.raises(MarketGPTError) as info:
            CandleTokenizer.load(path)
        assert str(path) in str(info.value), name
        assert words in str(info.value), (name, str(info.value))


# ---------------------------------------------------------------- inspection
def test_inspection_report_and_table():
    report = inspect_tokenizer(TOK_V, TRAIN)
    json.dumps(report, allow_nan=False)
    assert set(report["channels"]) == set(TOK_V.channels)
    for c in report["channels"].values():
        assert 0 < c["bins_used"] <= 1 and c["edge_min"] < c["edge_max"]
    assert set(report["assets"]) == {"S0", "S1", "S2", "S3"}
    worst = report["worst_asset"]
    assert worst["rmse_over_std"] == max(a["rmse_over_std"] for a in report["assets"].values())
    # cross-check one asset through the public one-asset API
    df = TRAIN[TRAIN.symbol == worst["symbol"]]
    f = TOK_V.features(df)[:, 0]
    rmse = np.sqrt(np.mean((TOK_V.decode_features(TOK_V.encode(df))[:, 0] - f) ** 2))
    assert math.isclose(rmse / f.std(), worst["rmse_over_std"], rel_tol=1e-9)
    text = format_inspection(report)
    assert "worst asset" in text and worst["symbol"] in text and "volume" in text
    no_frame = inspect_tokenizer(TOK)
    assert no_frame["assets"] is None and no_frame["channels"]["close"]["usage_source"] == "training"
    json.dumps(no_frame, allow_nan=False)
    assert "close" in format_inspection(no_frame)


# ---------------------------------------------------------------- real data
# Bin placement, measured on ../shared/data (276 daily assets; fit on dates <= the 70% quantile,
# 2015-09-22; vocab 1024; worst asset's close RMSE / close std over all its candles; perplexity of
# the close channel's training unigram). Prior: uniform in asinh(x / scale) on [-5, 5].
#   plain pooled quantiles                     worst 56.5% (SUSHI-USD)
#   50% empirical + 50% uniform(train range)   worst 16.5% (COMP-USD)
#   weight 0.00 (prior only), scale 0.01       worst 0.98% (EURSEK)  median 0.44%  perplexity 334
#   weight 0.25, scale 0.01                    worst 0.67% (EURCHF)  median 0.43%  perplexity 525
#   weight 0.50, scale 0.001                   worst 1.25% (BSV-USD) median 0.62%  perplexity 773
#   weight 0.50, scale 0.01   <- chosen        worst 0.90% (KSM-USD) median 0.50%  perplexity 700
#   weight 0.50, scale 0.03                    worst 0.81% (AAVE-USD) median 0.48% perplexity 639
#   weight 0.70, scale 0.01                    worst 1.64% (BSV-USD) median 0.67%  perplexity 829
#   weight 0.90, scale 0.01                    worst 4.5%  (SUSHI-USD)
# The chosen point keeps a 2x margin under the 2% bound while most bins still see training candles.
def read_shared_daily(root: Path) -> pd.DataFrame:
    parts = []
    for f in sorted(root.glob("*/*.csv.gz")):
        if f.parent.name == "intraday":
            continue
        df = pd.read_csv(f, dtype={"open": "float64", "high": "float64", "low": "float64",
                                   "close": "float64", "volume": "float64"})
        df.insert(0, "symbol", f.name.removesuffix(".csv.gz"))
        parts.append(df)
    frame = pd.concat(parts, ignore_index=True)
    frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d")
    return frame.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)


def test_real_data_close_reconstruction_within_2pct_of_std_for_every_asset():
    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    t0 = time.perf_counter()
    frame = read_shared_daily(SHARED_DATA)
    cutoff = frame["date"].quantile(0.70)
    tok = CandleTokenizer(1024).fit(frame[frame["date"] <= cutoff])
    report = inspect_tokenizer(tok, frame)  # all candles of every asset, val/test included
    ratios = {s: a["rmse_over_std"] for s, a in report["assets"].items()}
    assert len(ratios) == frame["symbol"].nunique() >= 270
    worst = report["worst_asset"]
    print(f"\nreal data: {len(frame):,} candles, {len(ratios)} assets, training cutoff {cutoff.date()}, "
          f"{time.perf_counter() - t0:.1f} s")
    print(format_inspection(report, max_assets=10))
    bad = {s: r for s, r in ratios.items() if r is None or r > 0.02}
    assert not bad, f"close-return RMSE above 2% of std: {bad}"
    # cross-check the worst asset with the one-asset API
    df = frame[frame["symbol"] == worst["symbol"]]
    f = tok.features(df)[:, 0]
    rmse = np.sqrt(np.mean((tok.decode_features(tok.encode(df))[:, 0] - f) ** 2))
    assert math.isclose(rmse / f.std(), worst["rmse_over_std"], rel_tol=1e-9)
