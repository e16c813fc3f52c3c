"""Signals: the LONG / SHORT / FLAT rule, horizon names on each calendar, the signal table and `marketgpt signals`."""

import numpy as np
import pandas as pd
import pytest
from helpers import is_png, run_cli, run_dir_of, small_config

from marketgpt.errors import MarketGPTError
from marketgpt.signals import (
    check_costs,
    decide,
    expected_simple_return,
    horizon_bars,
    parse_horizon_names,
    signal_table,
)


def test_the_rule_needs_the_probability_and_the_mean_past_the_cost():
    rt = check_costs(0.55, 5, 2)                                  # 14 bps round trip
    assert rt == pytest.approx(0.0014)
    p = [0.55, 0.55, 0.70, 0.45, 0.45, 0.30, 0.50, 0.54]
    e = [0.0015, 0.0014, -0.01, -0.0015, -0.0014, 0.02, 0.05, 0.05]
    signal, confidence = decide(p, e, 0.55, rt)
    assert signal.tolist() == [1, 0, 0, -1, 0, 0, 0, 0]
    assert np.allclose(confidence, [0.55, 0.55, 0.70, 0.55, 0.55, 0.70, 0.50, 0.54])
    strict, _ = decide(p, e, 0.6, rt)
    assert strict.tolist() == [0] * 8


def test_horizon_names_and_bad_options():
    assert parse_horizon_names("2m, 1d,1w") == ("1d", "1w", "2m")
    assert horizon_bars("1m", "business") == 21 and horizon_bars("1m", "daily") == 30
    with pytest.raises(MarketGPTError, match="horizon 3w unknown"):
        parse_horizon_names("1w,3w")
    with pytest.raises(MarketGPTError, match="--threshold must be in"):
        check_costs(0.4, 5, 2)
    with pytest.raises(MarketGPTError, match="--slippage-bps must be"):
        check_costs(0.55, 5, -1)


def forecast_rows(symbol, days, p, mean, last=100.0):
    return pd.DataFrame({"symbol": symbol, "as_of": pd.Timestamp("2020-01-03"), "horizon": days, "prob_up": p,
                         "mean": mean, "last_close": last, "mean_return": np.log(np.asarray(mean) / last)})


def test_signal_table_takes_each_assets_bars_and_names_a_missing_horizon():
    table = pd.concat([forecast_rows("SPY", range(1, 8), 0.6, 101.0), forecast_rows("BTC", range(1, 8), 0.3, 97.0)])
    table.loc[(table.symbol == "BTC") & (table.horizon == 7), "prob_up"] = 0.7
    table.loc[(table.symbol == "BTC") & (table.horizon == 7), "mean"] = 105.0
    out = signal_table(table, {"SPY": "business", "BTC": "daily"}, ("1d", "1w"))
    got = {(r.symbol, r.horizon): (r.bars, r.signal) for r in out.itertuples()}
    assert got == {("SPY", "1d"): (1, "LONG"), ("SPY", "1w"): (5, "LONG"), ("BTC", "1d"): (1, "SHORT"),
                   ("BTC", "1w"): (7, "LONG")}
    assert np.allclose(out.expected_return, [-0.03, 0.05, 0.01, 0.01])        # sorted: BTC, then SPY
    with pytest.raises(MarketGPTError, match=r"no 2w horizon for BTC \(14 bars\), SPY \(10 bars\): they hold days 1..7"):
        signal_table(table, {"SPY": "business", "BTC": "daily"}, ("2w",))
    only_log = table.drop(columns=["mean", "last_close"])
    assert np.allclose(expected_simple_return(only_log), np.expm1(only_log.mean_return))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals")
    result = run_cli("train", small_config(tmp, "sig", epochs=2, asset_dropout=0.3, evaluate=False))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout)


def test_signals_command_writes_the_table_and_band_charts(tiny_run, tmp_path):
    result = run_cli("signals", tiny_run, "--symbols", "SPX,AAPL", "--horizons", "1d,1w,1m", "--samples", "64",
                     "--threshold", "0.52", "-o", tmp_path / "sig.csv", "--charts", tmp_path / "charts", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SPX" in result.stdout and "signal" in result.stdout
    table = pd.read_csv(tmp_path / "sig.csv", parse_dates=["as_of"])
    assert sorted(zip(table.symbol, table.horizon, table.bars)) == [
        ("AAPL", "1d", 1), ("AAPL", "1m", 21), ("AAPL", "1w", 5), ("SPX", "1d", 1), ("SPX", "1m", 21), ("SPX", "1w", 5)]
    signal, confidence = decide(table.prob_up, table.expected_return, 0.52, check_costs(0.52, 5, 2))
    assert table.signal.tolist() == [{1: "LONG", 0: "FLAT", -1: "SHORT"}[s] for s in signal]
    assert np.allclose(table.confidence, confidence)
    q = table[["close_q05", "close_q25", "close_q75", "close_q95"]].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all() and (q[:, 0] < q[:, 3]).all()
    last = table.last_close.to_numpy()[:, None]
    assert (np.log(q[:, 1:2] / last) <= table[["median_log_return"]].to_numpy() + 1e-12).all()
    assert (table[["median_log_return"]].to_numpy() <= np.log(q[:, 2:3] / last) + 1e-12).all()
    assert table.mean_log_return.notna().all()
    assert all(is_png(tmp_path / "charts" / f"{s}.png") for s in ("SPX", "AAPL"))


def test_a_crypto_asset_gets_calendar_day_horizons(tiny_run, shared_data, tmp_path):
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nBTC-USD,crypto\n")
    result = run_cli("signals", tiny_run, "--universe", universe, "--provider", f"files:{shared_data}", "--data-dir",
                     tmp_path / "cache", "--horizons", "1w,2w", "--samples", "32", "-o", tmp_path / "btc.json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_json(tmp_path / "btc.json")
    assert table.bars.tolist() == [7, 14]


def test_signals_bad_input_is_one_line(tiny_run, tmp_path):
    for args, message in [(["--horizons", "1w,6m"], "horizon 6m unknown"),
                          (["--threshold", "1.2"], "--threshold must be in"),
                          (["--cost-bps", "-5"], "--cost-bps must be"),
                          (["-o", tmp_path / "s.txt"], "must end in .parquet, .csv or .json")]:
        result = run_cli("signals", tiny_run, *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
