"""The tokenizer's optional volatility scale: a trailing, past-only EWMA of each asset's squared close returns.

Why: one pooled bin grid serves assets whose daily volatility differs ~20x (FX ~0.5%, small crypto ~6%), so FX
spends its days in a few central bins and crypto in the wide outer ones. Dividing the price features of candle t
by sigma_t (RiskMetrics: sigma_t^2 = lam sigma_{t-1}^2 + (1 - lam) r_{t-1}^2, r the close log return of the same
asset) puts every asset on one grid in units of its own recent volatility. sigma_t uses returns up to t-1 only;
each asset starts from the prior sigma_0 fitted on the training period (the median over assets of their training
RMS close return), and sigma never drops below FLOOR (a flat stretch would otherwise send it to 0).

Measured by bench/skill.py (281 daily series of ../shared/data, vocab 256, 2.35M parameters, 12 x 100 steps; lambda
0.97 chosen on val over 0.985, and over RiskMetrics' 0.94 at 4 x 100 steps): test NLL skill vs GARCH(1,1)-t
-0.0117 -> +0.0064 nats/day with the temperature alone (+0.0019 -> +0.0090 with the calibration's widths), share of
the 39 assets with >= 100 test days beating GARCH-t 49% -> 72% (77% with the widths).

The model is given log(sigma / REFERENCE) of the candle it predicts (known at the candle before: it uses returns up
to there), and the density of the raw return is the density of z = r / sigma divided by sigma (NLL + log sigma).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import MarketGPTError

#: the lowest sigma (a daily log-return std of 0.01%): below every measured asset's volatility
FLOOR = 1e-4
#: decoded price features (log moves) are capped at +-MAX_MOVE, the range of the unscaled grid's fine bins, and so are
#: the returns the recursion takes: an outer z bin (up to 500 sigma) times a large sigma would otherwise give a path a
#: move of e^100 and a sigma that feeds on it. No daily candle measured comes near (largest |close return|: 1.52).
MAX_MOVE = 5.0
#: the model's scale input is log(sigma / REFERENCE), about 0 for a 1%-a-day asset
REFERENCE = 0.01
#: bin priors in z units (see tokenizer_bins.PRIOR): asinh(z / 1) uniform on [-500, 500], the same relative
#: resolution in sigma units as the raw grid's asinh(x / 0.01) on [-5, 5] in return units
PRIOR_Z = {"close": (-500.0, 500.0, 1.0), "open": (-500.0, 500.0, 1.0),
           "upper": (0.0, 500.0, 1.0), "lower": (0.0, 500.0, 1.0)}
SCALED = tuple(PRIOR_Z)


def check_lambda(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)) or not 0 < lam < 1:
        raise MarketGPTError(f"scale_lambda must be a number in (0, 1) (0 for no scale), got {lam!r}")
    return float(lam)


def prior_sigma(close_returns: np.ndarray, asset_index: np.ndarray) -> float:
    """The median over assets of each asset's RMS close return: where every asset's EWMA starts."""
    if close_returns.size == 0:
        raise MarketGPTError("cannot fit the scale prior: no close returns in the training frame")
    counts = np.bincount(asset_index)
    ms = np.bincount(asset_index, weights=close_returns ** 2)[counts > 0] / counts[counts > 0]
    return max(float(np.sqrt(np.median(ms))), FLOOR)


def ewma_sigma(close_returns: np.ndarray, asset_index: np.ndarray, lam: float, sigma0: float) -> np.ndarray:
    """sigma of every feature row (rows grouped by asset in order): row k of an asset uses its returns before k."""
    from scipy.signal import lfilter

    out = np.empty(close_returns.size)
    bounds = np.flatnonzero(np.diff(asset_index, prepend=-1, append=-1))
    for b, e in zip(bounds[:-1], bounds[1:]):   # a loop over assets, not over candles
        r2 = np.minimum(close_returns[b:e] ** 2, MAX_MOVE ** 2)
        filt, _ = lfilter([1 - lam], [1, -lam], r2, zi=[lam * sigma0 ** 2])
        out[b] = sigma0 ** 2
        out[b + 1:e] = filt[:-1]
    return np.sqrt(np.maximum(out, FLOOR ** 2))


def next_sigma(sigma, close_return, lam: float):
    """sigma of the candle after one of scale sigma and close log return close_return (the same recursion)."""
    r2 = np.minimum(np.square(close_return), MAX_MOVE ** 2)
    return np.sqrt(np.maximum(lam * np.square(sigma) + (1 - lam) * r2, FLOOR ** 2))


def model_input(sigma):
    """The model's scale input for a candle of scale sigma."""
    return np.log(np.asarray(sigma, dtype=np.float64) / REFERENCE)


def to_dict(lam: float, sigma0: float) -> dict:
    return {"method": "ewma", "lambda": lam, "prior_sigma": sigma0, "floor": FLOOR, "reference": REFERENCE}


def from_dict(d) -> tuple[float, float]:
    if not isinstance(d, dict) or d.get("method") != "ewma":
        raise MarketGPTError(f"scale must be an object with method 'ewma', got {d!r}")
    lam = check_lambda(d.get("lambda"))
    s0 = d.get("prior_sigma")
    if isinstance(s0, bool) or not isinstance(s0, (int, float)) or not math.isfinite(s0) or s0 < FLOOR:
        raise MarketGPTError(f"scale prior_sigma must be a number >= {FLOOR}, got {s0!r}")
    if d.get("floor") != FLOOR or d.get("reference") != REFERENCE:
        raise MarketGPTError(f"scale floor/reference {d.get('floor')!r}/{d.get('reference')!r} are not this "
                             f"version's {FLOOR}/{REFERENCE}")
    return lam, float(s0)
