"""Backtest engine, metrics, out-of-sample forecasts and `marketgpt backtest`.

The engine is checked against a plain per-day loop written here from the definitions in engine.py; the metrics
against values computed by hand."""

import json
import math
import shutil
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli, run_dir_of, small_config

from marketgpt.backtest import engine
from marketgpt.backtest import metrics as M


def loop_backtest(weights, close, open_, horizon, cost, fill):
    """The engine's definitions, day by day and asset by asset: bars, tranches, fills, costs, forced exits."""
    T, A = close.shape
    bar_rows = [[t for t in range(T) if np.isfinite(close[t, a])] for a in range(A)]
    book = np.zeros((T, A))          # D_k at each asset's bar k, indexed by bar
    for a in range(A):
        h = horizon[a]
        for k, t in enumerate(bar_rows[a]):
            book[k, a] = sum(weights[bar_rows[a][j], a] for j in range(max(0, k - h + 1), k + 1)) / h
    equity, e = np.zeros(T), 1.0
    for t in range(T):
        gain_old = gain_new = paid = 0.0
        for a in range(A):
            if t not in bar_rows[a]:
                continue
            k = bar_rows[a].index(t)
            old = book[k - 2, a] if k >= 2 else 0.0
            new = book[k - 1, a] if k >= 1 else 0.0
            if t == bar_rows[a][-1] and t < T - 1:
                new = 0.0                                       # its bars end before the panel: sold
            paid += cost * abs(new - old)
            if k == 0:
                continue
            prev = close[bar_rows[a][k - 1], a]
            if fill == "open":
                gain_old += old * (open_[t, a] / prev - 1)
                gain_new += new * (close[t, a] / open_[t, a] - 1)
            else:
                gain_old += old * (close[t, a] / prev - 1)
        e *= (1 + gain_old) * (1 - paid) * (1 + gain_new)
        equity[t] = e
    return equity


def prices(T, A, seed=0, missing=()):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, A)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, (T, A)))
    for t, a in missing:
        close[t, a] = open_[t, a] = np.nan
    return close, open_


@pytest.mark.parametrize("fill", ["open", "close"])
@pytest.mark.parametrize("gaps", [True, False])
def test_engine_equals_a_plain_loop_with_costs(fill, gaps):
    """With gaps (missing bars, an asset that ends early: each asset's own bars) and dense (bars are rows)."""
    T, A = 60, 4
    missing = [(5, 1), (6, 1), (20, 2), (33, 0)] + [(t, 3) for t in range(45, T)] if gaps else []
    close, open_ = prices(T, A, 1, missing)
    rng = np.random.default_rng(2)
    signal = rng.choice([-1.0, 0.0, 1.0], size=(T, A))
    weights = engine.equal_weights(np.where(np.isfinite(close), signal, np.nan))
    for horizon in (np.array([3, 1, 5, 2]), np.full(A, 4)):
        result = engine.run(weights, close, open_, horizon, cost=0.0007, fill=fill)
        expected = loop_backtest(weights, close, open_, horizon, 0.0007, fill)
        assert np.max(np.abs(result.equity - expected)) < 1e-9
        assert abs(result.equity[-1] - 1) > 1e-3      # the example moves: equality is not of two flat lines
    if gaps:
        assert np.all(result.book[45:, 3] == 0)


def test_mixed_calendars_keep_the_gross_exposure_at_one():
    """Four weekday assets (no bars on weekends) and two 7-day ones, always long with 5- and 7-bar tranches: a
    weekend row must not hand the two coins the whole book."""
    dates = pd.date_range("2021-01-04", periods=70, freq="D")
    weekend = (dates.day_of_week >= 5)[:, None]
    close, open_ = prices(len(dates), 6, 3)
    close[:, :4] = np.where(weekend, np.nan, close[:, :4])
    open_[:, :4] = np.where(weekend, np.nan, open_[:, :4])
    signal = np.where(np.isfinite(close), 1.0, np.nan)
    weights = engine.equal_weights(signal)
    assert np.allclose(weights[~weekend[:, 0]].sum(axis=1), 1.0)           # weekdays: everyone, 1/6 each
    assert np.allclose(weights[weekend[:, 0]].sum(axis=1), 2 / 6)           # weekends: the coins keep 1/6 each
    result = engine.run(weights, close, open_, np.array([5, 5, 5, 5, 7, 7]), cost=0.0007)
    assert result.exposure.max() <= 1 + 1e-12 and result.exposure[14:-3].min() > 0.99    # the stocks end on a Friday
    gone = signal.copy()
    gone[40:, 4:] = np.nan                                                  # the coins' last bar is row 39
    stale = engine.equal_weights(gone)
    assert np.allclose(stale[50, 4:], 0)                                    # coins gone from day 40 leave the count
    assert np.allclose(stale[50, :4], 0.25) and np.allclose(stale[42, :4], 1 / 6)


def test_tranches_hold_a_signal_h_bars_one_part_per_day():
    T = 12
    close = np.full((T, 1), 100.0)
    weights = np.zeros((T, 1))
    weights[2, 0] = 1.0                            # one LONG signal at the close of row 2
    result = engine.run(weights, close, close, 4, cost=0.0, fill="close")
    # D is 1/4 from bar 2 to bar 5; filled one bar later: positions after rows 3..6
    assert np.allclose(result.book[:, 0], [0, 0, 0, .25, .25, .25, .25, 0, 0, 0, 0, 0])


def test_fills_open_and_close_are_the_next_bar():
    close = np.array([[100.0], [110.0], [121.0], [121.0]])
    open_ = np.array([[100.0], [105.0], [115.5], [121.0]])
    weights = np.array([[1.0], [1.0], [1.0], [1.0]])
    by_open = engine.run(weights, close, open_, 1, fill="open")
    # decided at the close of row 0, bought at the open of row 1: row 1 earns 105 -> 110 only
    assert by_open.returns[1] == pytest.approx(110 / 105 - 1)
    assert by_open.returns[2] == pytest.approx(121 / 110 - 1)
    by_close = engine.run(weights, close, open_, 1, fill="close")
    # bought at the close of row 1: row 1 earns nothing, row 2 earns 110 -> 121
    assert by_close.returns[1] == 0 and by_close.returns[2] == pytest.approx(0.1)


def test_a_strategy_that_flips_every_day_loses_exactly_its_cost():
    T, cost = 30, 0.0005
    flips = np.where(np.arange(T) % 2 == 0, 1.0, -1.0)[:, None]
    flat = np.full((T, 1), 50.0)
    result = engine.run(flips, flat, flat, 1, cost=cost, fill="open")
    # entry (turnover 1) on row 1, then a flip (turnover 2) on every later row
    assert result.equity[-1] == pytest.approx((1 - cost) * (1 - 2 * cost) ** (T - 2), rel=1e-12)
    close, open_ = prices(T, 1, 3)
    paid = engine.run(flips, close, open_, 1, cost=cost, fill="open")
    free = engine.run(flips, close, open_, 1, cost=0.0, fill="open")
    assert np.allclose(paid.equity / free.equity, np.cumprod(1 - cost * paid.turnover), rtol=1e-12)
    assert paid.turnover[2:].tolist() == [2.0] * (T - 2)


def test_no_look_ahead_signals_positions_and_equity():
    T, A, t = 80, 3, 40
    close, open_ = prices(T, A, 4)

    def backtest(c, o):
        bars = engine.Bars(np.isfinite(c))
        signal = engine.momentum_signal(c, bars, np.array([10] * A), np.array([2] * A))
        return signal, engine.run(engine.equal_weights(signal), c, o, 3, cost=0.001, fill="open")

    signal, base = backtest(close, open_)
    later = close.copy(), open_.copy()
    later[0][t + 1:] *= 1.3
    later[1][t + 1:] *= 0.7
    signal_later, changed = backtest(*later)
    assert np.array_equal(signal[:t + 1], signal_later[:t + 1]) and np.array_equal(base.book[:t + 1],
                                                                                  changed.book[:t + 1])
    assert np.array_equal(base.equity[:t + 1], changed.equity[:t + 1])
    assert not np.array_equal(base.equity[t + 1:], changed.equity[t + 1:])
    earlier = close.copy()
    earlier[t - 9:t - 1] *= np.where(signal[t] > 0, 0.5, 2.0)   # inside day t's momentum window: flips its sign
    signal_earlier, moved = backtest(earlier, open_)
    assert not np.array_equal(signal[t], signal_earlier[t])
    assert not np.array_equal(base.book[t + 1], moved.book[t + 1])


@pytest.mark.parametrize("fill", ["open", "close"])
def test_the_return_of_day_t_plus_1_uses_positions_decided_up_to_t_only(fill):
    T, A, t = 40, 2, 20
    close, open_ = prices(T, A, 5)
    rng = np.random.default_rng(6)
    weights = rng.uniform(-0.5, 0.5, (T, A))
    base = engine.run(weights, close, open_, 1, 0.001, fill)
    future = weights.copy()
    future[t + 1:] = rng.uniform(-0.5, 0.5, (T - t - 1, A))
    changed = engine.run(future, close, open_, 1, 0.001, fill)
    assert np.array_equal(base.returns[:t + 2], changed.returns[:t + 2])
    decided = weights.copy()
    decided[t, 0] += 0.3
    moved = engine.run(decided, close, open_, 1, 0.001, fill)
    assert np.array_equal(base.returns[:t + 1], moved.returns[:t + 1]) and moved.returns[t + 1] != base.returns[t + 1]


def test_random_baseline_has_the_strategys_signals_at_other_times():
    rng = np.random.default_rng(7)
    signal = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=(25, 3)), 4, axis=0)
    signal[:3, 1] = np.nan
    rand = engine.random_signal(signal, seed=1)
    assert np.array_equal(np.isnan(rand), np.isnan(signal))
    for a in range(3):
        mine, theirs = signal[np.isfinite(signal[:, a]), a], rand[np.isfinite(rand[:, a]), a]
        assert sorted(mine) == sorted(theirs)                                   # the same signals ...
        assert abs(np.count_nonzero(np.diff(mine)) - np.count_nonzero(np.diff(theirs))) <= 1   # ... and changes
    assert not np.array_equal(rand, signal, equal_nan=True)


def test_metrics_against_hand_computed_values():
    r = np.array([0.02, 0.0, 0.02, 0.0])             # mean 0.01, sample sd 0.01 * sqrt(4/3)
    assert M.sharpe(r, 252) == pytest.approx(math.sqrt(3) / 2 * math.sqrt(252))
    r = np.array([0.02, -0.01, 0.03, -0.02])          # mean 0.005, downside sqrt((1e-4 + 4e-4) / 4)
    assert M.sortino(r, 1) == pytest.approx(math.sqrt(0.2))
    assert M.profit_factor(r) == pytest.approx(0.05 / 0.03)
    s = M.summarize(np.array([0.1, -0.5, 0.0, 1.0, 0.5]), 252, trades=np.array([0.3, -0.1, 0.2, -0.2]))
    assert s["max_drawdown"] == pytest.approx(-0.5) and s["max_drawdown_periods"] == 2
    assert s["total_return"] == pytest.approx(1.65 - 1)
    assert s["cagr"] == pytest.approx(1.65 ** (252 / 5) - 1)
    assert s["calmar"] == pytest.approx(s["cagr"] / 0.5)
    assert s["win_rate_days"] == pytest.approx(3 / 5) and s["win_rate_trades"] == 0.5
    assert s["profit_factor_trades"] == pytest.approx(0.5 / 0.3)
    steady = M.summarize(np.full(504, 0.001), 252)
    assert steady["cagr"] == pytest.approx(1.001 ** 252 - 1)


def test_probabilistic_and_deflated_sharpe_ratio():
    r = np.tile([0.011, -0.009], 10)      # two-point returns: skew 0, kurtosis 1, so the PSR denominator is 1
    sr = 0.1 * math.sqrt(19 / 20)          # mean 0.001 / sample sd 0.01 sqrt(20/19)
    assert M.psr(r) == pytest.approx(NormalDist().cdf(sr * math.sqrt(19)))
    assert M.dsr(r, [M.sharpe(r)]) == pytest.approx(M.psr(r))
    trials = [M.sharpe(r), 0.05, -0.02, 0.0, 0.08]
    sr0 = math.sqrt(np.var(trials, ddof=1)) * ((1 - M.EULER_GAMMA) * NormalDist().inv_cdf(1 - 1 / 5)
                                               + M.EULER_GAMMA * NormalDist().inv_cdf(1 - 1 / (5 * math.e)))
    assert M.dsr(r, trials) == pytest.approx(NormalDist().cdf((sr - sr0) * math.sqrt(19)))
    assert M.dsr(r, trials) < M.psr(r)


def test_calendars_252_and_365():
    from marketgpt.signals import horizon_bars

    r = np.random.default_rng(8).normal(0.001, 0.01, 300)
    business, daily = M.summarize(r, M.PERIODS["business"]), M.summarize(r, M.PERIODS["daily"])
    assert (business["periods_per_year"], daily["periods_per_year"]) == (252, 365)
    assert daily["sharpe"] / business["sharpe"] == pytest.approx(math.sqrt(365 / 252))
    assert daily["volatility"] / business["volatility"] == pytest.approx(math.sqrt(365 / 252))
    assert [horizon_bars(n, "business") for n in ("1d", "1w", "2w", "1m", "2m")] == [1, 5, 10, 21, 42]
    assert [horizon_bars(n, "daily") for n in ("1d", "1w", "2w", "1m", "2m")] == [1, 7, 14, 30, 60]


# --- out-of-sample forecasts and the command, on a small trained run ------------------------------------------
WINDOW = ("2014-10-01", "2014-11-14")     # in the sample run's test split; SPX and IXIC trade, so do all benchmarks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backtest")
    result = run_cli("train", small_config(tmp, "bt", epochs=2, evaluate=False))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout)


@pytest.fixture(scope="module")
def one_thread():
    """Forecasts in this process on one thread: on 2 busy cores a second torch thread made them 15x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def oos(tiny_run, one_thread):
    from marketgpt.backtest import oos_forecasts

    lines = []
    table = oos_forecasts(tiny_run, [1, 5], samples=8, start=pd.Timestamp(WINDOW[0]), end=pd.Timestamp(WINDOW[1]),
                          log=lines.append)
    return table, lines


def test_oos_forecasts_cover_the_window_and_are_cached(tiny_run, oos):
    from marketgpt.backtest import oos_forecasts

    table, lines = oos
    assert sorted(table.symbol.unique()) == ["IXIC", "SPX"] and sorted(table.horizon.unique()) == [1, 5]
    assert table.as_of.min() >= pd.Timestamp(WINDOW[0]) and table.as_of.max() <= pd.Timestamp(WINDOW[1])
    assert table.groupby("as_of").size().eq(4).all() and any("out-of-sample forecasts" in x for x in lines)
    again, quiet = [], []
    same = oos_forecasts(tiny_run, [5], samples=8, start=pd.Timestamp(WINDOW[0]), end=pd.Timestamp(WINDOW[1]),
                         log=quiet.append)
    assert quiet == [] and (tiny_run / "oos_test.parquet").exists()
    pd.testing.assert_frame_equal(same, table[table.horizon == 5].reset_index(drop=True))
    more = oos_forecasts(tiny_run, [2], samples=8, start=pd.Timestamp(WINDOW[0]), end=pd.Timestamp(WINDOW[1]),
                         log=again.append)
    assert again and sorted(more.horizon.unique()) == [2]


def test_oos_forecasts_use_the_candles_up_to_each_date_only(tiny_run, one_thread):
    from marketgpt.backtest.data import _forecast_dates
    from marketgpt.data import load_candles, load_universe
    from marketgpt.forecast import Forecaster

    forecaster = Forecaster.from_pretrained(tiny_run, device="cpu")
    candles = load_candles(load_universe("sample"), "sample", forecaster.cfg.data.data_dir)
    dates = [pd.Timestamp(d) for d in ("2014-10-06", "2014-10-07", "2014-10-08")]
    t = dates[1]

    def rows(frame):
        return _forecast_dates(forecaster, frame, {}, dates, [1, 5], 16, 0, lambda *a: None).set_index(
            ["as_of", "symbol", "horizon"]).sort_index()

    base = rows(candles)
    later = candles.copy()
    prices = ["open", "high", "low", "close"]
    later.loc[later.date > t, prices] *= 1.25
    changed = rows(later)
    upto = base.index.get_level_values("as_of") <= t
    pd.testing.assert_frame_equal(base[upto], changed[upto])
    assert not np.allclose(base[~upto]["mean"].to_numpy(), changed[~upto]["mean"].to_numpy())
    earlier = candles.copy()
    earlier.loc[earlier.date == pd.Timestamp("2014-10-06"), prices] *= 1.5         # the day before t
    moved = rows(earlier)
    assert not np.allclose(base.loc[t]["mean"].to_numpy(), moved.loc[t]["mean"].to_numpy())


def errors_of(result):
    return [line for line in result.stderr.splitlines() if line.startswith("marketgpt: error:")]


def test_backtest_command_end_to_end(tiny_run, oos, shared_data, tmp_path):
    out = tmp_path / "out"
    args = ["backtest", tiny_run, "--horizon", "1w", "--samples", "8", "--start", WINDOW[0], "--end", WINDOW[1],
            "--provider", f"files:{shared_data}", "--data-dir", tmp_path / "cache", "-o", out]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "out-of-sample forecasts:" not in result.stdout                 # the fixture's rows were cached
    for name in ("strategy", "always long", "momentum 12-1", "random", "SPY", "QQQ", "GLD", "BTC-USD", "Sharpe"):
        assert name in result.stdout
    results = json.loads((out / "metrics.json").read_text())
    rows = {r["series"]: r for r in results["series"]}
    assert rows["SPY"]["periods_per_year"] == 252 and rows["BTC-USD"]["periods_per_year"] == 365
    assert rows["strategy"]["periods_per_year"] == 252 and rows["strategy"]["trials"] == 1
    daily = pd.read_parquet(out / "daily.parquet")
    spy = daily[daily.series == "SPY"]
    assert spy.date.min() >= pd.Timestamp(WINDOW[0]) and (spy.date.dt.day_of_week < 5).all()
    assert (daily[daily.series == "BTC-USD"].date.dt.day_of_week >= 5).any()
    signals = pd.read_parquet(out / "signals.parquet")
    assert set(signals.bars) == {5} and set(signals.signal) <= {"LONG", "FLAT", "SHORT"}
    text = (out / "report.md").read_text()
    assert "| Sharpe |" in text and "deflated Sharpe ratio" in text
    assert all((out / f).stat().st_size > 1000 for f in ("equity.png", "drawdowns.png", "rolling_sharpe.png",
                                                         "monthly_returns.png"))
    second = run_cli(*args, "--cost-bps", "20", "--long-only", "--fill", "close", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    strategy = json.loads((out / "metrics.json").read_text())["series"][0]
    assert strategy["trials"] == 2 and strategy["dsr"] < strategy["psr"]
    assert len(json.loads((out / "trials.json").read_text())["trials"]) == 2


def test_backtest_bad_input_is_one_line(tiny_run, oos, tmp_path):
    table, _ = oos
    wf = tmp_path / "wf"
    wf.mkdir()
    shutil.copy(tiny_run / "config.json", wf / "config.json")
    table.to_parquet(wf / "oos.parquet")
    (tmp_path / "empty").mkdir()
    table.iloc[:0].to_parquet(tmp_path / "none.parquet")
    shutil.copy(tiny_run / "config.json", tmp_path / "config.json")
    old = tmp_path / "old"
    (old / "indices").mkdir(parents=True)
    pd.DataFrame({"date": ["1990-01-02", "1990-01-03", "1990-01-04"], "open": [10.0, 10.5, 11.0],
                  "high": [11.0, 11.0, 11.5], "low": [9.5, 10.0, 10.5], "close": [10.5, 11.0, 11.2],
                  "volume": [100, 100, 100]}).to_csv(old / "indices" / "OLD.csv", index=False)
    (tmp_path / "bench.csv").write_text("symbol,category\nOLD,indices\n")
    cases = [
        (["backtest", tiny_run, "--benchmarks", "SPY,NOPE"], "unknown benchmark NOPE"),
        (["backtest", wf, "--horizon", "1m", "--benchmarks", "none"], "no 1m horizon"),
        (["backtest", tiny_run, "--cost-bps", "-1"], "--cost-bps must be"),
        (["backtest", tmp_path / "empty"], "no out-of-sample forecasts"),
        (["backtest", tmp_path / "none.parquet"], "no out-of-sample forecasts"),
        (["backtest", tiny_run, "--start", "1990-01-01", "--end", "1990-02-01"], "no out-of-sample forecasts"),
        (["backtest", wf, "--benchmarks", "OLD", "--benchmark-universe", tmp_path / "bench.csv", "--provider",
          f"files:{old}", "--data-dir", tmp_path / "cache"], "no dates shared by the strategy"),
        (["backtest", wf, "--horizon", "3w"], "horizon 3w unknown"),
    ]
    for args, message in cases:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        lines = errors_of(result)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
