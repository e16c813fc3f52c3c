"""The calendar input (model.calendar): each candle's weekday, known from its own date. The model needs it and sees it
causally, training and scoring hand it over from the token store, sampling carries the weekdays of the candles to
sample (the same with and without the KV cache), the forecaster takes them from its future dates, and runs trained
without a calendar load and forecast as before."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_cli, run_dir_of, small_config

from marketgpt.config import ModelConfig
from marketgpt.dataset import gather_inputs, make_windows, weekday
from marketgpt.forecast import Forecaster
from marketgpt.generate import Prompt, sample_paths
from marketgpt.model import MarketGPT

C = 4


def calendar_model(calendar: bool = True, seed: int = 0) -> MarketGPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=16, context_length=12, d_model=32, num_layers=2, num_heads=4, d_ff=64, dropout=0.0,
                      asset_embed_dim=8, category_embed_dim=4, calendar=calendar)
    return MarketGPT(cfg, C, 3, 2).eval()


def inputs(B=3, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 16, (B, T, C), generator=g), torch.randint(0, 3, (B,), generator=g),
            torch.randint(0, 2, (B,), generator=g), torch.randint(0, 7, (B, T), generator=g))


def test_weekday_is_the_dates_own_monday_zero():
    dates = pd.date_range("1965-03-01", "2031-12-31", freq="37D")
    assert np.array_equal(weekday(dates.to_numpy()), dates.day_of_week.to_numpy())
    assert weekday(np.array(["2021-12-25", "2021-12-27"], dtype="datetime64[D]")).tolist() == [5, 0]


def test_a_calendar_model_needs_the_weekday_and_sees_each_one_from_its_own_candle_on():
    model = calendar_model()
    tokens, asset, category, days = inputs()
    with pytest.raises(ValueError, match="weekday"):
        model.hidden(tokens, asset, category)
    with pytest.raises(ValueError, match="weekday"):
        model.hidden(tokens, asset, category, weekday=days[:, :-1])
    base = model.hidden(tokens, asset, category, weekday=days)
    for t in (0, 5, 11):
        changed = days.clone()
        changed[:, t] = (changed[:, t] + 1) % 7
        out = model.hidden(tokens, asset, category, weekday=changed)
        assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)          # nothing before t sees it ...
        assert not torch.allclose(out[:, t], base[:, t], atol=1e-4)        # ... the candle's own position does
    plain = calendar_model(calendar=False)
    assert plain.weekday_emb is None
    assert torch.equal(plain.hidden(tokens, asset, category),
                       plain.hidden(tokens, asset, category, weekday=(days + 3) % 7))


def prompts_with(days_shift: int = 0, horizon: int = 8):
    g = np.random.default_rng(0)
    out = []
    for i, n in enumerate((10, 4, 10)):
        days = (np.arange(n + horizon) + i + days_shift) % 7
        out.append(Prompt(g.integers(0, 16, (n, C)), i % 3, i % 2, 100 + i, weekday=days))
    return out


def test_sampling_carries_the_weekdays_of_the_candles_to_sample_with_and_without_the_cache():
    model = calendar_model()
    horizon = 8        # past the context of 12 for the prompts of 10: the window slides and is primed again
    cached = sample_paths(model, prompts_with(), horizon, 16, seed=3)
    plain = sample_paths(model, prompts_with(), horizon, 16, seed=3, use_cache=False)
    for a, b in zip(cached, plain):
        assert a.shape == (16, horizon, C) and np.array_equal(a, b)
    shifted = sample_paths(model, prompts_with(days_shift=1), horizon, 16, seed=3)
    assert not all(np.array_equal(a, b) for a, b in zip(cached, shifted))
    # the weekdays past the horizon are never used
    longer = [Prompt(p.tokens, p.asset, p.category, p.key, weekday=np.concatenate([p.weekday, [6, 6, 6]]))
              for p in prompts_with()]
    assert all(np.array_equal(a, b) for a, b in zip(cached, sample_paths(model, longer, horizon, 16, seed=3)))
    short = prompts_with()
    short[1] = Prompt(short[1].tokens, 1, 1, 7, weekday=short[1].weekday[:-1])
    with pytest.raises(ValueError, match="prompt 1"):
        sample_paths(model, short, horizon, 4)
    mixed = prompts_with()
    mixed[2] = Prompt(mixed[2].tokens, 2, 0, 9)
    with pytest.raises(ValueError, match="prompt 2"):
        sample_paths(model, mixed, horizon, 4)


# --- small runs, with and without a calendar -----------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calendar")
    out = {}
    for name, calendar in (("calendar", True), ("plain", False)):
        cfg = small_config(tmp, name, model={"scale_lambda": 0.97, "calendar": calendar}, epochs=1,
                           max_steps_per_epoch=8, evaluate=False)
        result = run_cli("train", cfg)
        assert result.returncode == 0, result.stderr
        out[name] = run_dir_of(result.stdout)
    # a run trained before the calendar existed: its config has no such key
    config = out["plain"] / "config.json"
    raw = json.loads(config.read_text())
    del raw["model"]["calendar"]
    config.write_text(json.dumps(raw))
    return out


def test_training_hands_each_window_the_weekdays_of_its_input_candles(runs):
    from marketgpt.checkpoint import load_checkpoint
    from marketgpt.run import load_run

    assert any(k.startswith("weekday_emb") for k in load_checkpoint(runs["calendar"] / "best_model.pt")["model"])
    assert not any(k.startswith("weekday_emb") for k in load_checkpoint(runs["plain"] / "best_model.pt")["model"])
    cfg, tok, store, model, _ = load_run(runs["calendar"], "cpu")
    assert model.weekday_emb is not None
    T = cfg.model.context_length
    windows = make_windows(store, "val", T)[:5]
    got = gather_inputs(store, windows, T)
    assert got["weekday"].shape == got["scale"].shape == (5, T)
    for w, days in zip(windows, got["weekday"]):
        dates = pd.DatetimeIndex(np.asarray(store.dates[w[0]:w[0] + T]))
        assert np.array_equal(days, dates.day_of_week)


def test_a_run_trained_before_the_calendar_loads_without_one(runs):
    from marketgpt.run import load_run

    cfg, tok, store, model, _ = load_run(runs["plain"], "cpu")
    assert cfg.model.calendar is False and model.weekday_emb is None


def sample_candles(run_dir):
    from marketgpt.data import load_candles, load_universe

    cfg = json.loads((run_dir / "config.json").read_text())
    candles = load_candles(load_universe("sample"), "sample", cfg["data"]["data_dir"])
    return candles[candles.symbol == "AAPL"].reset_index(drop=True)


def as_crypto(one: pd.DataFrame) -> pd.DataFrame:
    """The same prices on a calendar of every day, under a ticker no run has seen."""
    out = one.tail(300).reset_index(drop=True).assign(symbol="NEWCOIN")
    out["date"] = pd.date_range("2020-01-01", periods=len(out), freq="D")
    return out


def test_the_forecaster_gives_a_calendar_run_the_weekdays_of_its_future_dates(runs):
    one = sample_candles(runs["calendar"])
    coin = as_crypto(one)
    moved = coin.assign(date=coin.date + pd.Timedelta(days=1))      # the same prices, each a day later
    results = {}
    for name in ("calendar", "plain"):
        forecaster = Forecaster.from_pretrained(runs[name], device="cpu")
        a = forecaster.predict(coin, horizon=10, num_samples=64, seed=1, categories={"NEWCOIN": "crypto"})["NEWCOIN"]
        b = forecaster.predict(moved, horizon=10, num_samples=64, seed=1, categories={"NEWCOIN": "crypto"})["NEWCOIN"]
        assert a.calendar == "daily" and (pd.DatetimeIndex(a.dates).day_of_week >= 5).sum() >= 2
        results[name] = np.array_equal(a.log_returns, b.log_returns)
    assert results == {"calendar": False, "plain": True}    # the weekdays reach the calendar model's sampling only


def test_a_calendar_forecast_at_t_ignores_what_comes_after_t_and_sees_what_comes_before(runs):
    forecaster = Forecaster.from_pretrained(runs["calendar"], device="cpu")
    one = sample_candles(runs["calendar"])
    as_of = one.date.iloc[-40]
    base = forecaster.predict(one, horizon=5, num_samples=64, seed=4, as_of=as_of)["AAPL"].log_returns
    later = one.copy()
    later.loc[later.date > as_of, ["open", "high", "low", "close"]] *= 1.3
    assert np.array_equal(base, forecaster.predict(later, horizon=5, num_samples=64, seed=4,
                                                   as_of=as_of)["AAPL"].log_returns)
    earlier = one.copy()
    earlier.loc[earlier.date == one.date.iloc[-45], ["open", "high", "low", "close"]] *= 1.3
    assert not np.array_equal(base, forecaster.predict(earlier, horizon=5, num_samples=64, seed=4,
                                                       as_of=as_of)["AAPL"].log_returns)
