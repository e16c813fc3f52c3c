"""Forecasting: KV-cached generation equal to the uncached reference, valid candles, a sampler that follows the
heads' exact densities, the as-of rule (no look-ahead), zero-shot tickers, outputs, and one-line errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import is_png, run_cli, run_dir_of, small_config
from scipy import stats

from marketgpt.checkpoint import load_checkpoint, save_atomic
from marketgpt.config import ModelConfig
from marketgpt.data import load_candles, load_universe
from marketgpt.errors import MarketGPTError
from marketgpt.forecast import MAX_HORIZON, Forecaster, calendar_of, future_dates
from marketgpt.generate import Prompt, sample_paths, window_plan
from marketgpt.model import MarketGPT


# --- generation -------------------------------------------------------------------------------------------
def random_model(T=16, C=4, V=24, dropout=0.2):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, context_length=T, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                      dropout=dropout, asset_embed_dim=8, category_embed_dim=4)
    return MarketGPT(cfg, C, 3, 2, unknown=True).eval()


def prompts_of(model, lengths, seed=0):
    rng = np.random.default_rng(seed)
    V, C = model.cfg.vocab_size, model.num_channels
    return [Prompt(rng.integers(0, V, (n, C)), i % 3, i % 2, 100 + i) for i, n in enumerate(lengths)]


def test_cached_hidden_states_equal_the_full_forward():
    model = random_model()
    tokens = torch.randint(0, 24, (3, 16, 4), generator=torch.Generator().manual_seed(1))
    asset, category = torch.tensor([0, 1, 3]), torch.tensor([0, 1, 2])   # 3, 2: the unknown rows
    full = model.hidden(tokens, asset, category)
    cache = model.new_cache(3)
    steps = [model.hidden(tokens[:, :5], asset, category, cache)]
    steps += [model.hidden(tokens[:, t:t + 1], asset, category, cache) for t in range(5, 16)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds context_length"):
        model.hidden(tokens[:, :1], asset, category, cache)


@pytest.mark.parametrize("horizon", [1, 6, 40])   # 40 > context 16: re-primed twice
def test_cached_and_uncached_generation_give_the_same_paths(horizon):
    """fp32 on CPU: the two paths run the trunk over the same windows, so their logits agree to ~1e-6 and the
    inverse-CDF draws pick the same tokens (a token could only differ if a uniform fell within ~1e-6 of a CDF step)."""
    model = random_model()
    prompts = prompts_of(model, [40, 40, 3, 16])
    cached = sample_paths(model, prompts, horizon, num_samples=9, seed=5, max_batch=7)
    plain = sample_paths(model, prompts, horizon, num_samples=9, seed=5, max_batch=64, use_cache=False)
    for a, b in zip(cached, plain):
        assert a.shape == (9, horizon, 4)
        np.testing.assert_array_equal(a, b)


def test_paths_depend_on_the_seed_only():
    model = random_model()
    prompts = prompts_of(model, [30, 30, 8])
    base = sample_paths(model, prompts, 12, num_samples=6, seed=3)
    alone = sample_paths(model, prompts[1:2], 12, num_samples=6, seed=3, max_batch=4)
    np.testing.assert_array_equal(base[1], alone[0])                  # not the batch, not the other assets
    other = sample_paths(model, prompts, 12, num_samples=6, seed=4)
    assert not np.array_equal(base[1], other[1])
    model.train()
    sample_paths(model, prompts, 2, num_samples=2)
    assert model.training                                              # the mode is restored


def test_window_plan_keeps_the_context_inside_the_learned_positions():
    for T in (1, 2, 16, 128):
        for h in (1, 5, 21, 42, 300):
            first, keep = window_plan(10_000, h, T)
            assert 1 <= first <= T and 1 <= keep <= T
            if h - 1 <= T // 2:
                assert first + h - 1 <= T                              # never re-primed
    assert window_plan(5, 21, 128)[0] == 5                             # a short history is used whole


# --- a small trained run ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forecast")
    cfg = small_config(tmp, "fc", epochs=3, max_steps_per_epoch=25, asset_dropout=0.3, evaluate=False)
    result = run_cli("train", cfg)
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout)


@pytest.fixture(scope="module")
def forecaster(tiny_run):
    return Forecaster.from_pretrained(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def candles(tiny_run):
    cfg = json.loads((tiny_run / "config.json").read_text())
    return load_candles(load_universe("sample"), "sample", cfg["data"]["data_dir"])


def test_every_sampled_candle_is_valid(forecaster, candles):
    for seed in range(12):
        fc = forecaster.predict(candles, horizon=8, num_samples=64, seed=seed)
        assert not fc.failed and fc.symbols == list(dict.fromkeys(candles.symbol))
        for a in fc.assets.values():
            o, h, lo, c = (a.paths[..., k] for k in range(4))
            assert a.paths.dtype == np.float64 and a.paths.shape == (64, 8, 4)
            assert (lo > 0).all() and (lo <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all()
            assert np.isfinite(a.paths).all()


def head_probs(forecaster, prompt_tokens, asset, category, previous=None):
    """The model's exact distribution of the next candle's channel k (k = len(previous)), uncached."""
    m = forecaster.model
    x = torch.from_numpy(prompt_tokens[None].astype(np.int64))
    with torch.no_grad():
        h = m.hidden(x, torch.tensor([asset]), torch.tensor([category]))[:, -1]
        prev = torch.tensor([previous or []], dtype=torch.long).reshape(1, -1)
        return torch.softmax(m.next_channel_logits(h, prev, torch.tensor([category])).double(), -1)[0].numpy()


def chi_square_p(counts, probs):
    """Pearson chi-square p-value of token counts against probabilities (rare tokens pooled to expected >= 5)."""
    expected = probs * counts.sum()
    order = np.argsort(expected)
    pooled_e, pooled_o, acc_e, acc_o = [], [], 0.0, 0.0
    for i in order:
        acc_e, acc_o = acc_e + expected[i], acc_o + counts[i]
        if acc_e >= 5:
            pooled_e.append(acc_e)
            pooled_o.append(acc_o)
            acc_e = acc_o = 0.0
    pooled_e[-1] += acc_e
    pooled_o[-1] += acc_o
    return stats.chisquare(pooled_o, pooled_e).pvalue


def test_sampler_follows_the_heads_exact_densities(forecaster, candles):
    """The next-day close token of 20,000 paths against the close head's probabilities, and the open token given
    the most frequent close token against the open head conditioned on it; the decoded close return of each path
    is the decode value of its token. temperature 0.7 and top-p 0.8 must fail the same test."""
    spx = candles[candles.symbol == "SPX"]
    tok = forecaster.tokenizer
    prompt = tok.encode(spx.tail(33).reset_index(drop=True))
    asset, category, _ = forecaster.ids("SPX", None)
    n = 20_000
    paths = sample_paths(forecaster.model, [Prompt(prompt, asset, category, 7)], 1, n, seed=11)[0][:, 0]
    V = tok.vocab_size
    p_close = head_probs(forecaster, prompt, asset, category)
    assert chi_square_p(np.bincount(paths[:, 0], minlength=V), p_close) > 1e-3
    top = int(np.bincount(paths[:, 0]).argmax())
    given = paths[paths[:, 0] == top]
    p_open = head_probs(forecaster, prompt, asset, category, [top])
    assert chi_square_p(np.bincount(given[:, 1], minlength=V), p_open) > 1e-3
    fc = forecaster.predict(spx, horizon=1, num_samples=2000, seed=2)
    r = fc["SPX"].log_returns[:, 0]
    values = tok.bin_values("close")
    assert (np.abs(r[:, None] - values[None]) < 1e-9).any(axis=1).all()
    for kwargs in ({"temperature": 0.7}, {"top_p": 0.8}):
        biased = sample_paths(forecaster.model, [Prompt(prompt, asset, category, 7)], 1, n, seed=11, **kwargs)[0]
        assert chi_square_p(np.bincount(biased[:, 0, 0], minlength=V), p_close) < 1e-6


def test_a_forecast_uses_the_candles_up_to_its_as_of_date_only(forecaster, candles):
    goog = candles[candles.symbol == "GOOG"].reset_index(drop=True)
    as_of = goog.date.iloc[len(goog) // 2]
    base = forecaster.predict(goog, horizon=5, num_samples=32, seed=1, as_of=as_of)["GOOG"]
    assert base.as_of == as_of and base.history.date.max() == as_of
    later = goog.copy()
    after = later.date > as_of
    later.loc[after, ["open", "high", "low", "close"]] *= 1.7            # every later candle changed
    again = forecaster.predict(later, horizon=5, num_samples=32, seed=1, as_of=as_of)["GOOG"]
    np.testing.assert_array_equal(base.paths, again.paths)
    earlier = goog.copy()
    i = int(np.flatnonzero(earlier.date == as_of)[0]) - 3               # a candle inside the context
    earlier.loc[i, ["open", "high", "low", "close"]] *= 1.05
    changed = forecaster.predict(earlier, horizon=5, num_samples=32, seed=1, as_of=as_of)["GOOG"]
    assert not np.array_equal(base.paths, changed.paths)


def test_quantiles_frame_and_files(forecaster, candles, tmp_path):
    fc = forecaster.predict(candles, horizon=6, num_samples=200, seed=0)
    q = fc.quantiles([0.1, 0.5, 0.9])
    assert list(q.columns[4:]) == ["close_q10", "close_q50", "close_q90", "return_q10", "return_q50", "return_q90"]
    assert (q.close_q10 <= q.close_q50).all() and (q.close_q50 <= q.close_q90).all()
    frame = fc.to_frame()
    assert len(frame) == 6 * len(fc.assets) and frame.horizon.tolist()[:6] == [1, 2, 3, 4, 5, 6]
    level_cols = [c for c in frame.columns if c.startswith("close_q")]
    assert (np.diff(frame[level_cols].to_numpy(), axis=1) >= 0).all()
    spx = fc["SPX"]
    assert frame[frame.symbol == "SPX"].prob_up.tolist() == pytest.approx(list(spx.prob_up()))
    assert fc.prob_up(3)["SPX"] == pytest.approx((spx.close[:, 2] > spx.last_close).mean())
    assert np.allclose(fc.median().query("symbol == 'SPX'")["median"], np.median(spx.close, axis=0))
    for ext in ("parquet", "csv", "json"):
        path = fc.save(tmp_path / f"f.{ext}")
        back = {"parquet": pd.read_parquet, "csv": pd.read_csv, "json": pd.read_json}[ext](path)
        assert len(back) == len(frame) and back["close_q50"].to_numpy() == pytest.approx(frame["close_q50"])
    with pytest.raises(MarketGPTError, match="parquet, .csv or .json"):
        fc.save(tmp_path / "f.xlsx")


def test_forecast_dates_follow_the_assets_calendar():
    weekdays = pd.bdate_range("2021-01-04", periods=60).to_series()
    every_day = pd.date_range("2021-01-01", periods=60).to_series()
    assert calendar_of(weekdays, "crypto") == "business" and calendar_of(every_day, "us_stocks") == "daily"
    assert calendar_of(every_day[:3], "crypto") == "daily" and calendar_of(every_day[:3], "fx") == "business"
    friday = pd.Timestamp("2021-01-08")
    assert list(future_dates(friday, 2, "business")) == [pd.Timestamp("2021-01-11"), pd.Timestamp("2021-01-12")]
    assert list(future_dates(friday, 2, "daily")) == [pd.Timestamp("2021-01-09"), pd.Timestamp("2021-01-10")]


# --- zero-shot ---------------------------------------------------------------------------------------------
def test_a_new_ticker_is_forecast_through_the_trained_unknown_embedding(forecaster, candles, tiny_run):
    info = json.loads((tiny_run / "asset_info.json").read_text())
    assert info["unknown"]["asset_id"] == len(info["assets"]) and info["unknown"]["asset_dropout"] == 0.3
    new = candles[candles.symbol == "IBM"].assign(symbol="NEWCO")
    fc = forecaster.predict(new, horizon=3, num_samples=16, categories={"NEWCO": "eu_stocks"})
    a = fc["NEWCO"]
    assert not a.known and a.category == "eu_stocks" and a.paths.shape == (16, 3, 4)
    # the unknown rows were trained: they moved away from their initialisation about as far as the known rows did
    state = load_checkpoint(tiny_run / "best_model.pt")["model"]
    cfg = forecaster.cfg
    torch.manual_seed(cfg.training.seed)                                  # the trainer's initialisation
    init = MarketGPT(cfg.model, 4, len(info["assets"]), len(info["categories"]), unknown=True).state_dict()
    for table in ("asset_emb.weight", "category_emb.weight"):
        moved = (state[table] - init[table]).norm(dim=1)
        assert moved[-1] > 0.3 * moved[:-1].mean(), table


def test_a_run_without_unknown_rows_forecasts_its_own_assets_and_refuses_new_ones(tiny_run, candles, tmp_path):
    old = tmp_path / "old_run"
    old.mkdir()
    for name in ("config.json", "tokenizer.json", "asset_info.json", "data_info.json"):
        (old / name).write_bytes((tiny_run / name).read_bytes())
    (old / "tokens").symlink_to(tiny_run / "tokens")
    ckpt = load_checkpoint(tiny_run / "best_model.pt")
    ckpt["model"]["asset_emb.weight"] = ckpt["model"]["asset_emb.weight"][:-1]     # as saved before the rows existed
    ckpt["model"]["category_emb.weight"] = ckpt["model"]["category_emb.weight"][:-1]
    save_atomic(ckpt, old / "best_model.pt")
    f = Forecaster.from_pretrained(old, device="cpu")
    assert not f.can_forecast_new
    fc = f.predict(pd.concat([candles[candles.symbol == "SPX"], candles[candles.symbol == "IBM"].assign(symbol="NEWCO")]),
                   horizon=2, num_samples=4)
    assert fc.symbols == ["SPX"] and "trained before it existed" in fc.failed["NEWCO"]


def test_asset_dropout_is_deterministic_per_step_and_hides_the_stated_share(tmp_path):
    from marketgpt.config import load_config
    from marketgpt.distributed import Dist
    from marketgpt.train import Trainer, write_run_files

    cfg = load_config(small_config(tmp_path, asset_dropout=0.25, category_dropout=0.5))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    d = Dist()
    write_run_files(cfg, run_dir, d)
    trainer = Trainer(cfg, run_dir, d, log=lambda *a: None)
    asset, category = trainer.hidden_ids(40_000)
    again = trainer.hidden_ids(40_000)
    assert np.array_equal(asset, again[0]) and np.array_equal(category, again[1])
    assert asset.mean() == pytest.approx(0.25, abs=0.01) and category.mean() == pytest.approx(0.125, abs=0.01)
    assert not (category & ~asset).any()
    trainer.state.global_step += 1
    assert not np.array_equal(asset, trainer.hidden_ids(40_000)[0])
    x, y, mask, a, c, _ = trainer.batch(trainer.train_windows[:4], (np.array([True, False, True, False]),
                                                                   np.array([True, False, False, False])))
    n = len(trainer.store.symbols)
    assert a[0] == n and a[2] == n and a[1] < n and c[0] == len(trainer.store.category_names) and c[2] < c[0]


# --- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"horizon": 0}, "horizon must be an integer in 1..252"),
    ({"horizon": MAX_HORIZON + 1}, "horizon must be an integer"),
    ({"num_samples": 0}, "samples must be an integer"),
    ({"num_samples": 2.5}, "samples must be an integer"),
    ({"temperature": -1.0}, "temperature must be"),
    ({"top_p": 0.0}, "top-p must be in"),
    ({"as_of": "31/12/2010"}, "not a date"),
])
def test_bad_requests_raise_one_line_errors(forecaster, candles, kwargs, message):
    with pytest.raises(MarketGPTError, match=message):
        forecaster.predict(candles, **{"horizon": 3, "num_samples": 4, **kwargs})


def test_assets_that_cannot_be_forecast_are_named_and_the_others_forecast(forecaster, candles):
    spx = candles[candles.symbol == "SPX"]
    short = candles[candles.symbol == "IBM"].head(1)
    fc = forecaster.predict(pd.concat([spx, short]), horizon=2, num_samples=4, as_of=None)
    assert fc.symbols == ["SPX"] and "at least 2" in fc.failed["IBM"]
    early = forecaster.predict(spx, horizon=2, num_samples=4, as_of="1990-01-01")
    assert "before its first candle" in early.failed["SPX"]
    late = forecaster.predict(spx, horizon=2, num_samples=4, as_of="2030-01-01")
    assert "after its last candle" in late.failed["SPX"]
    with pytest.raises(MarketGPTError, match="missing column"):
        forecaster.predict(spx.drop(columns=["high"]))
    with pytest.raises(MarketGPTError, match=r"no forecast for 'IBM' \(IBM: 1 candle"):
        fc["IBM"]


def test_cli_errors_are_one_line(tiny_run, tmp_path):
    cases = [
        (["forecast", tmp_path / "nothing"], "run directory not found"),
        (["forecast", tiny_run, "--horizon", "0"], "horizon must be"),
        (["forecast", tiny_run, "--samples", "-3"], "samples must be"),
        (["forecast", tiny_run, "--symbols", "NOPE"], "not in the run's universe"),
        (["forecast", tiny_run, "-o", tmp_path / "x.txt"], "must end in .parquet, .csv or .json"),
        (["forecast", tiny_run, "--device", "tpu9"], "unknown device"),
    ]
    for args, message in cases:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        err = result.stderr.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in result.stderr, (args, result.stderr)


# --- the command on the demo run ----------------------------------------------------------------------------
def test_forecast_command_on_the_demo_run_with_a_ticker_it_never_saw(demo_run, shared_data, tmp_path):
    run_dir, _ = demo_run
    universe = tmp_path / "universe.csv"
    universe.write_text("symbol,category\nSPX,indices\nGOOG,us_stocks\nBTC-USD,crypto\n")
    result = run_cli("forecast", run_dir, "--symbols", "SPX,GOOG", "--horizon", "21", "--samples", "256",
                     "-o", tmp_path / "demo.parquet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "P(up)" in result.stdout and "SPX" in result.stdout
    frame = pd.read_parquet(tmp_path / "demo.parquet")
    assert sorted(frame.symbol.unique()) == ["GOOG", "SPX"] and frame.horizon.max() == 21
    assert all(is_png(tmp_path / "demo_charts" / f"{s}.png") for s in ("SPX", "GOOG"))
    new = run_cli("forecast", run_dir, "--universe", universe, "--symbols", "BTC-USD", "--provider",
                  f"files:{shared_data}", "--data-dir", tmp_path / "cache", "--horizon", "10", "--samples", "128",
                  "-o", tmp_path / "btc.csv", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    assert "new to the model" in new.stdout
    btc = pd.read_csv(tmp_path / "btc.csv", parse_dates=["date", "as_of"])
    assert (btc.date.dt.day_of_week >= 5).any()                           # crypto trades every day
    cols = [c for c in btc.columns if c.startswith("close_q")]
    assert (np.diff(btc[cols].to_numpy(), axis=1) >= 0).all() and math.isclose(btc.horizon.max(), 10)
    assert is_png(tmp_path / "btc_charts" / "BTC-USD.png")
