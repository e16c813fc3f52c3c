"""The volatility scale of the tokenizer (tokenizer_scale.py): past-only, the density of the raw return with its
Jacobian (integrates to 1; NLL = token NLL + log bin width + log sigma), decoding and sampling with sigma, and runs
without a scale loading and scoring as before."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli, run_dir_of, small_config

from marketgpt.data import load_candles, load_universe
from marketgpt.density import close_density
from marketgpt.errors import MarketGPTError
from marketgpt.forecast import Forecaster
from marketgpt.tokenizer import CandleTokenizer
from marketgpt.tokenizer_scale import FLOOR


def candles_of(symbol: str, vol: float, n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    r = rng.standard_t(4, n) * vol
    close = 100 * np.exp(np.cumsum(r))
    open_ = close * np.exp(rng.normal(0, vol / 3, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) / np.exp(np.abs(rng.normal(0, vol / 2, n)))
    return pd.DataFrame({"symbol": symbol, "date": pd.bdate_range("2010-01-04", periods=n), "open": open_,
                         "high": high, "low": low, "close": close})


@pytest.fixture(scope="module")
def frame():
    return pd.concat([candles_of("FX", 0.005), candles_of("COIN", 0.05, seed=1)], ignore_index=True)


@pytest.fixture(scope="module")
def tok(frame):
    return CandleTokenizer(64, scale_lambda=0.94).fit(frame)


def test_sigma_is_the_past_only_ewma_and_normalises_the_price_features(tok, frame):
    one = frame[frame.symbol == "COIN"].reset_index(drop=True)
    r = np.log(one.close / one.close.shift()).to_numpy()[1:]
    expect = [tok.scale_prior]
    for x in r[:-1]:
        expect.append(max(np.sqrt(0.94 * expect[-1] ** 2 + 0.06 * x ** 2), FLOOR))
    sigma = tok.sigma(one)
    assert np.allclose(sigma, expect, rtol=1e-12)
    assert np.allclose(tok.features(one)[:, 0], r / sigma, rtol=1e-12)
    # one grid serves both: the FX and the crypto asset spend their days in the same central bins
    fx, coin = (tok.encode(frame[frame.symbol == s])[:, 0] for s in ("FX", "COIN"))
    assert abs(np.median(fx) - np.median(coin)) <= 2 and abs(np.std(fx) - np.std(coin)) < 0.2 * np.std(coin)


def test_the_scale_uses_the_past_only(tok, frame):
    one = frame[frame.symbol == "COIN"].reset_index(drop=True)
    t = 200
    base_tokens, base_sigma = tok.encode(one), tok.sigma(one)
    later = one.copy()
    later.loc[t + 1:, ["open", "high", "low", "close"]] *= np.exp(np.linspace(0.2, 3, len(one) - t - 1))[:, None]
    # token row k is frame row k + 1: rows <= t are token rows < t
    assert np.array_equal(tok.encode(later)[:t], base_tokens[:t]) and np.array_equal(tok.sigma(later)[:t],
                                                                                      base_sigma[:t])
    assert tok.next_sigma(one.iloc[:t + 1]) == base_sigma[t]
    earlier = one.copy()
    earlier.loc[t - 20, ["open", "high", "low", "close"]] *= 1.3     # a 26% jump 20 days before t
    assert not np.array_equal(tok.sigma(earlier)[t - 1], base_sigma[t - 1])
    assert not np.array_equal(tok.encode(earlier)[t - 20:t], base_tokens[t - 20:t])


def test_density_of_the_raw_return_integrates_to_one_and_carries_the_jacobian(tok):
    d = close_density(tok)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(tok.vocab_size) * 0.3, size=3)
    sigma = np.array([0.004, 0.02, 0.08])
    for i in range(3):
        y = sigma[i] * np.sinh(np.linspace(-12, 12, 1_000_001))     # out to 80,000 sigma, fine near 0
        p = np.exp(-d.nll(np.repeat(probs[i:i + 1], y.size, 0), y, np.full(y.size, sigma[i])))
        assert np.trapezoid(p, y) == pytest.approx(1.0, abs=2e-3)
    edges = tok.bin_edges("close")
    k = np.arange(5, tok.vocab_size - 5, 7)                   # inner bins
    z = (edges[k - 1] + edges[k]) / 2
    s = np.full(k.size, 0.03)
    nll = d.nll(probs[np.zeros(k.size, int)], z * s, s)
    token_nll = -np.log(probs[0, k])
    assert np.allclose(nll, token_nll + np.log(edges[k] - edges[k - 1]) + np.log(s), rtol=1e-9, atol=1e-9)
    q = d.ppf(probs[:1], 0.9, np.array([0.05]))
    assert d.cdf(probs[:1], q, np.array([0.05])) == pytest.approx(0.9)
    assert d.crps(probs[:1], q, np.array([0.05])) == pytest.approx(0.05 * d.crps(probs[:1], q / 0.05))


def test_decoding_runs_the_recursion_along_a_path(tok, frame):
    one = frame[frame.symbol == "COIN"].reset_index(drop=True)
    tokens, sigma = tok.encode(one), tok.sigma(one)
    paths = tok.decode_paths(tokens[None, 100:160], one.close.iloc[100], sigma[100])[0]
    assert np.array_equal(tok.encode(pd.concat([one.iloc[:101], pd.DataFrame(
        paths, columns=["open", "high", "low", "close"]).assign(
        symbol="COIN", date=one.date.iloc[101:161].to_numpy())], ignore_index=True))[100:160], tokens[100:160])
    # the recursion on decoded returns follows the true sigma closely
    step = tok.decode(tokens[100:160], one.close.to_numpy()[100:160], sigma[100:160])
    assert np.abs(np.log(step[:, 3] / one.close.to_numpy()[101:161])).max() < 0.1
    with pytest.raises(MarketGPTError, match="decodes with sigma"):
        tok.decode_paths(tokens[None, :3], 100.0)


def test_the_file_keeps_the_scale_and_a_file_without_one_is_a_tokenizer_without_one(tok, frame, tmp_path):
    tok.save(tmp_path / "t.json")
    back = CandleTokenizer.load(tmp_path / "t.json")
    assert back.scale_lambda == 0.94 and back.scale_prior == tok.scale_prior
    assert np.array_equal(back.encode_frame(frame)[0], tok.encode_frame(frame)[0])
    plain = CandleTokenizer(64).fit(frame)
    d = plain.to_dict()
    assert "scale" not in d and plain.sigma(frame) is None and plain.next_sigma(frame[frame.symbol == "FX"]) is None
    again = CandleTokenizer.from_dict(json.loads(json.dumps(d)))
    assert not again.scaled and np.array_equal(again.encode_frame(frame)[0], plain.encode_frame(frame)[0])
    bad = dict(tok.to_dict(), scale={**tok.to_dict()["scale"], "lambda": 1.5})
    with pytest.raises(MarketGPTError, match="scale_lambda"):
        CandleTokenizer.from_dict(bad)


# --- a small scaled run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    out = {}
    for name, lam in (("scaled", 0.94), ("plain", 0)):
        cfg = small_config(tmp, name, model={"scale_lambda": lam}, epochs=2, max_steps_per_epoch=10, evaluate=False)
        result = run_cli("train", cfg)
        assert result.returncode == 0, result.stderr
        out[name] = run_dir_of(result.stdout)
    return out


def test_a_run_without_a_scale_has_no_scale_layer_nor_sigma_and_loads(runs):
    from marketgpt.checkpoint import load_checkpoint
    from marketgpt.run import load_run

    plain, scaled = runs["plain"], runs["scaled"]
    assert not (plain / "tokens" / "sigma.npy").exists() and (scaled / "tokens" / "sigma.npy").exists()
    assert not any(k.startswith("scale_proj") for k in load_checkpoint(plain / "best_model.pt")["model"])
    assert "scale" not in json.loads((plain / "tokenizer.json").read_text())
    cfg, tok, store, model, _ = load_run(plain, "cpu")
    assert model.scale_proj is None and store.sigma is None and not tok.scaled
    cfg, tok, store, model, _ = load_run(scaled, "cpu")
    assert model.scale_proj is not None and store.sigma is not None and tok.scaled


def test_scored_nll_of_a_scaled_run_is_token_nll_plus_log_width_plus_log_sigma(runs):
    from marketgpt.dataset import make_windows
    from marketgpt.evaluate import score_model
    from marketgpt.run import load_run

    cfg, tok, store, model, _ = load_run(runs["scaled"], "cpu")
    T = cfg.model.context_length
    windows = make_windows(store, "test", T)
    returns = np.asarray(store.returns)
    s = score_model(model, store, windows, T, close_density(tok), returns, 16)
    edges = np.concatenate([[-np.inf], tok.bin_edges("close"), [np.inf]])
    token = np.asarray(store.tokens[s["row"], 0]).astype(int)
    inner = (token > 0) & (token < tok.vocab_size - 1)
    width = edges[token + 1] - edges[token]
    expect = s["nll"][:, 0] + np.log(width) + np.log(np.asarray(store.sigma)[s["row"]])
    assert inner.mean() > 0.95
    assert np.allclose(s["ret_nll"][inner], expect[inner], atol=1e-6)


def test_the_forecaster_samples_and_decodes_with_sigma(runs):
    forecaster = Forecaster.from_pretrained(runs["scaled"], device="cpu")
    cfg = json.loads((runs["scaled"] / "config.json").read_text())
    candles = load_candles(load_universe("sample"), "sample", cfg["data"]["data_dir"])
    symbol = forecaster.symbols[0]
    one = candles[candles.symbol == symbol].reset_index(drop=True)
    wide = one.copy()
    base = one.close.iloc[0]
    for col in ("open", "high", "low", "close"):
        wide[col] = base * np.exp(10 * np.log(one[col] / base))    # every log move x 10
    a = forecaster.predict(one, horizon=5, num_samples=400, seed=2)[symbol].log_returns
    b = forecaster.predict(wide, horizon=5, num_samples=400, seed=2)[symbol].log_returns
    # the same z grid decoded with a sigma 10x as large (the model's scale input differs by log 10, so the z draws
    # themselves may shift a little)
    iqr = [np.subtract(*np.quantile(x, [0.75, 0.25], axis=0)) for x in (a, b)]
    assert np.all((iqr[1] / iqr[0] > 6) & (iqr[1] / iqr[0] < 16))
    assert 6 < np.median(np.abs(b[:, 0])) / np.median(np.abs(a[:, 0])) < 16
