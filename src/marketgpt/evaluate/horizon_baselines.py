"""Baselines for the multi-horizon evaluation: S samples of the h-day cumulative log return of the close.

Layout (one asset): `returns` (T,) are its daily log returns in date order, returns[k] = ln(C_k / C_{k-1}), all
finite. An origin is an index t into them: the forecast is made after day t's close, may use returns[:t + 1] only
(the returns dated <= the origin), and its outcome at horizon h is r_h = ln(C_{t+h} / C_t) = returns[t+1:t+h+1].sum().
Every sampler returns an array (n_origins, n_horizons, S) in log-return units, NaN where it has no forecast.

Random numbers: each (origin, baseline) draws from its own generator np.random.default_rng([*seed, t, baseline id]),
so an origin's samples depend only on the seed, t and the returns up to t: not on later returns, nor on which other
origins are scored. Pass a different seed per asset, e.g. (seed, asset index), so assets get independent noise.
"""

from __future__ import annotations

import numpy as np

from ..baselines import MIN_TRAIN_GARCH, MIN_TRAIN_RW, fit_garch_t, garch_variance
from ..errors import MarketGPTError

#: origins between two GARCH refits (refits cost ~20-30 ms each on 300-2,500 returns; between them the fitted
#: variance recursion runs forward over the realised returns, so the volatility state is always current)
REFIT_EVERY = 20

#: fewest past h-day windows from which the bootstrap draws (the same floor as the random walk's returns)
MIN_BOOTSTRAP_WINDOWS = MIN_TRAIN_RW

BASELINES = ("random_walk", "garch_t", "bootstrap")


def check_inputs(returns, origins, horizons, n_samples: int):
    """(returns, origins, horizons) as float / int arrays, or MarketGPTError for unusable input."""
    returns = np.asarray(returns, dtype=np.float64)
    origins = np.asarray(origins)
    horizons = np.asarray(horizons)
    if returns.ndim != 1 or not np.isfinite(returns).all():
        raise MarketGPTError("returns must be a 1-D array of finite daily log returns")
    if origins.ndim != 1 or not np.issubdtype(origins.dtype, np.integer) or (np.diff(origins) <= 0).any() \
            or (len(origins) and (origins[0] < 0 or origins[-1] >= len(returns))):
        raise MarketGPTError(f"origins must be increasing integer indices into the {len(returns)} returns")
    if horizons.ndim != 1 or not len(horizons) or not np.issubdtype(horizons.dtype, np.integer) \
            or horizons[0] < 1 or (np.diff(horizons) <= 0).any():
        raise MarketGPTError(f"horizons must be increasing positive integers, got {horizons.tolist()}")
    if int(n_samples) < 2:
        raise MarketGPTError(f"n_samples must be at least 2, got {n_samples}")
    return returns, origins.astype(np.int64), horizons.astype(np.int64)


def _rng(seed, t: int, baseline: str) -> np.random.Generator:
    return np.random.default_rng([*np.atleast_1d(seed).tolist(), int(t), BASELINES.index(baseline)])


def realised_returns(returns, origins, horizons) -> np.ndarray:
    """r_h = returns[t+1:t+h+1].sum() per (origin, horizon), (n_origins, n_horizons); NaN past the data's end."""
    returns, origins, horizons = check_inputs(returns, origins, horizons, 2)
    c = np.concatenate([[0.0], np.cumsum(returns)])
    end = origins[:, None] + horizons[None, :] + 1
    ok = end <= len(returns)
    out = np.full(end.shape, np.nan)
    out[ok] = c[end[ok]] - np.broadcast_to(c[origins + 1][:, None], end.shape)[ok]
    return out


def random_walk_samples(returns, origins, horizons, n_samples: int, seed) -> np.ndarray:
    """Gaussian random walk: r_h ~ N(h mu, h sigma^2), mu and sigma (ddof=1) of all returns up to the origin
    (expanding window, the one-step baseline's estimator on a growing past). NaN with fewer than MIN_TRAIN_RW
    past returns or a constant past."""
    returns, origins, horizons = check_inputs(returns, origins, horizons, n_samples)
    out = np.full((len(origins), len(horizons), n_samples), np.nan)
    for i, t in enumerate(origins):
        past = returns[:t + 1]
        if len(past) < MIN_TRAIN_RW or not past.std(ddof=1) > 0:
            continue
        z = _rng(seed, t, "random_walk").standard_normal((len(horizons), n_samples))
        out[i] = horizons[:, None] * past.mean() + np.sqrt(horizons)[:, None] * past.std(ddof=1) * z
    return out


def bootstrap_samples(returns, origins, horizons, n_samples: int, seed) -> np.ndarray:
    """Draws (with replacement) from the asset's past overlapping h-day cumulative returns: the windows
    returns[j-h+1:j+1].sum() for j <= t. NaN at a horizon with fewer than MIN_BOOTSTRAP_WINDOWS past windows."""
    returns, origins, horizons = check_inputs(returns, origins, horizons, n_samples)
    c = np.concatenate([[0.0], np.cumsum(returns)])   # sequential: c[:t+2] depends on returns[:t+1] only
    out = np.full((len(origins), len(horizons), n_samples), np.nan)
    for i, t in enumerate(origins):
        rng = _rng(seed, t, "bootstrap")
        for j, h in enumerate(horizons):
            if t + 2 - h < MIN_BOOTSTRAP_WINDOWS:       # windows end at c index h..t+1
                continue
            ends = rng.integers(h, t + 2, size=n_samples)
            out[i, j] = c[ends] - c[ends - h]
    return out


def simulate_garch_t(params: dict, s2_next: float, horizons, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """S paths of the GARCH(1,1)-t recursion from the next day's variance s2_next, in the fit's percent units:
    eps_k = sqrt(s2_k) z_k with z_k standardized Student-t (unit variance), x_k = mu + eps_k,
    s2_{k+1} = omega + alpha eps_k^2 + beta s2_k. Returns the cumulative sums at the horizons, (n_horizons, S).

    Written in numpy rather than with arch's forecast(method="simulation"): arch needs a model object rebuilt on
    the data for every origin and draws from its own stream, whereas here the state comes from the same
    `garch_variance` recursion as the one-step baseline and the draws from the origin's own generator."""
    mu, omega, alpha, beta, nu = (params[k] for k in ("mu", "omega", "alpha", "beta", "nu"))
    horizons = np.asarray(horizons)
    z = rng.standard_t(nu, size=(int(horizons[-1]), n_samples)) * np.sqrt((nu - 2) / nu)
    s2 = np.full(n_samples, float(s2_next))
    cum = np.zeros(n_samples)
    out = np.empty((len(horizons), n_samples))
    for k in range(int(horizons[-1])):
        eps = np.sqrt(s2) * z[k]
        cum += mu + eps
        s2 = omega + alpha * eps * eps + beta * s2
        out[horizons == k + 1] = cum
    return out


def garch_t_samples(returns, origins, horizons, n_samples: int, seed, refit_every: int = REFIT_EVERY
                    ) -> tuple[np.ndarray, dict]:
    """GARCH(1,1) with standardized Student-t errors (baselines.fit_garch_t on 100 x all returns up to the origin,
    an expanding window), simulated h days ahead with `simulate_garch_t`.

    Refit rule: a fit at the first origin with at least MIN_TRAIN_GARCH past returns, then again every
    `refit_every` origins; in between the last fit's parameters stay and its variance recursion runs over the
    realised returns up to each origin. Origins with too short a past, or under a fit that fit_garch_t calls
    unusable, get NaN. Returns (samples, info): info counts them and lists every fit (origin, parameters or the
    `unusable` reason)."""
    returns, origins, horizons = check_inputs(returns, origins, horizons, n_samples)
    if int(refit_every) < 1:
        raise MarketGPTError(f"refit_every must be at least 1, got {refit_every}")
    out = np.full((len(origins), len(horizons), n_samples), np.nan)
    info = {"origins": int(len(origins)), "too_short": 0, "unusable_fit": 0, "fits": []}
    params, age = None, 0
    for i, t in enumerate(origins):
        if t + 1 < MIN_TRAIN_GARCH:
            info["too_short"] += 1
            continue
        if params is None or age >= refit_every:
            params, age = fit_garch_t(returns[:t + 1]), 0
            info["fits"].append({"origin": int(t), **params})
        age += 1
        if "unusable" in params:
            info["unusable_fit"] += 1
            continue
        x = 100.0 * returns[:t + 1]                     # the next day's variance from the returns up to t
        s2_next = (params["omega"] + params["alpha"] * (x[-1] - params["mu"]) ** 2
                   + params["beta"] * garch_variance(x, params)[-1])
        out[i] = simulate_garch_t(params, s2_next, horizons, n_samples, _rng(seed, t, "garch_t")) / 100.0
    info["missing"] = info["too_short"] + info["unusable_fit"]
    return out, info


def baseline_samples(returns, origins, horizons, n_samples: int, seed, refit_every: int = REFIT_EVERY
                     ) -> tuple[dict[str, np.ndarray], dict]:
    """All three baselines for one asset: ({name: (n_origins, n_horizons, S)}, GARCH info)."""
    garch, info = garch_t_samples(returns, origins, horizons, n_samples, seed, refit_every)
    return ({"random_walk": random_walk_samples(returns, origins, horizons, n_samples, seed), "garch_t": garch,
             "bootstrap": bootstrap_samples(returns, origins, horizons, n_samples, seed)}, info)
