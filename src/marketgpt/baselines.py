"""Token-level baselines scored in the same units as the model's loss (nats per channel)."""

from __future__ import annotations

import numpy as np

from .dataset import TokenStore


def target_rows(store: TokenStore, split: int) -> np.ndarray:
    """Rows of a split that are prediction targets (every row but each asset's first)."""
    first = np.flatnonzero(np.diff(store.asset, prepend=-1))
    rows = store.split == split
    rows[first] = False
    return np.flatnonzero(rows)


def unigram_probs(store: TokenStore, vocab_size: int, per_asset: bool = False) -> np.ndarray:
    """Training-period token frequencies per channel (add-one smoothed): (C, V), or (assets, C, V) per asset."""
    rows = target_rows(store, 0)
    tokens = np.asarray(store.tokens[rows]).astype(np.int64)
    C = tokens.shape[1]
    groups = store.asset[rows] if per_asset else np.zeros(len(rows), dtype=np.int64)
    n_groups = len(store.symbols) if per_asset else 1
    counts = np.ones((n_groups, C, vocab_size))
    for c in range(C):
        np.add.at(counts[:, c], (groups, tokens[:, c]), 1)
    probs = counts / counts.sum(-1, keepdims=True)
    return probs if per_asset else probs[0]


def unigram_nll(store: TokenStore, vocab_size: int, split: int = 1) -> np.ndarray:
    """Mean NLL per channel of the global training unigram on a split's targets."""
    probs = unigram_probs(store, vocab_size)
    tokens = np.asarray(store.tokens[target_rows(store, split)]).astype(np.int64)
    return np.array([-np.log(probs[c, tokens[:, c]]).mean() for c in range(tokens.shape[1])])


# ---------------------------------------------------------------------------------------------------
# token-level baselines for the per-channel table: scored on given target rows
# ---------------------------------------------------------------------------------------------------
def previous_rows(store: TokenStore, rows: np.ndarray) -> np.ndarray:
    """The row before each target row (same asset: a target row is never an asset's first row)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and ((rows < 1).any() or (store.asset[rows - 1] != store.asset[rows]).any()):
        raise ValueError("a target row is the first row of its asset")
    return rows - 1


def unigram_scores(store: TokenStore, rows: np.ndarray, vocab_size: int, per_asset: bool = False,
                   probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(NLL (n, C) in nats, hit (n, C) bool) of the training unigram on `rows`; per asset: each asset's own
    training unigram (add-one smoothed, so an asset with no training rows gets the uniform distribution)."""
    probs = unigram_probs(store, vocab_size, per_asset) if probs is None else probs
    rows = np.asarray(rows, dtype=np.int64)
    tokens = np.asarray(store.tokens[rows]).astype(np.int64)
    C = tokens.shape[1]
    table = probs if per_asset else probs[None]
    group = np.asarray(store.asset[rows], dtype=np.int64) if per_asset else np.zeros(len(rows), dtype=np.int64)
    nll = np.stack([-np.log(table[group, c, tokens[:, c]]) for c in range(C)], axis=1) if len(rows) else np.zeros((0, C))
    mode = table.argmax(-1)                                    # (groups, C)
    hit = mode[group] == tokens
    return nll, hit


def persistence_weight(store: TokenStore, vocab_size: int, unigram: np.ndarray | None = None) -> np.ndarray:
    """Per channel, the weight lambda of the point mass in the smoothed persistence forecast
    p(y) = lambda * 1{y = previous token} + (1 - lambda) * training unigram(y), fitted by maximum likelihood on
    the training-period targets (a 1-D concave problem). (C,)"""
    from scipy.optimize import minimize_scalar

    unigram = unigram_probs(store, vocab_size) if unigram is None else unigram
    rows = target_rows(store, 0)
    tokens = np.asarray(store.tokens[rows]).astype(np.int64)
    prev = np.asarray(store.tokens[rows - 1]).astype(np.int64)
    C = unigram.shape[0]
    out = np.zeros(C)
    if not len(rows):
        return out
    for c in range(C):
        same = tokens[:, c] == prev[:, c]
        u = unigram[c, tokens[:, c]]
        res = minimize_scalar(lambda lam: -np.log(lam * same + (1 - lam) * u).sum(), bounds=(0.0, 1.0 - 1e-9),
                              method="bounded", options={"xatol": 1e-7})
        out[c] = float(res.x)
    return out


def persistence_scores(store: TokenStore, rows: np.ndarray, vocab_size: int, weight: np.ndarray | None = None,
                       unigram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(NLL (n, C), hit (n, C)) of persistence: the point forecast is the previous candle's token (its hit
    rate is the accuracy); the NLL scores the smoothed point mass of `persistence_weight`."""
    unigram = unigram_probs(store, vocab_size) if unigram is None else unigram
    weight = persistence_weight(store, vocab_size, unigram) if weight is None else np.asarray(weight)
    rows = np.asarray(rows, dtype=np.int64)
    tokens = np.asarray(store.tokens[rows]).astype(np.int64)
    prev = np.asarray(store.tokens[previous_rows(store, rows)]).astype(np.int64)
    hit = tokens == prev
    C = tokens.shape[1]
    u = np.stack([unigram[c, tokens[:, c]] for c in range(C)], axis=1) if len(rows) else np.zeros((0, C))
    return -np.log(weight * hit + (1 - weight) * u), hit


# ---------------------------------------------------------------------------------------------------
# return-level baselines: one-step predictive distributions of the close-to-close log return
# ---------------------------------------------------------------------------------------------------
#: fewest training returns for which an asset gets a random walk / a GARCH fit (else: no baseline, NaN)
MIN_TRAIN_RW = 20
MIN_TRAIN_GARCH = 250


def random_walk(returns: np.ndarray, split: np.ndarray, asset: np.ndarray, n_assets: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian random walk: per asset, N(mean, std^2) of that asset's training-period returns (std with
    ddof=1), the same for every day. Returns (loc, scale) per row, NaN for assets with fewer than
    MIN_TRAIN_RW training returns."""
    loc, scale = np.full(len(returns), np.nan), np.full(len(returns), np.nan)
    for a in range(n_assets):
        mine = asset == a
        train = returns[mine & (split == 0)]
        if len(train) >= MIN_TRAIN_RW and train.std(ddof=1) > 0:
            loc[mine], scale[mine] = train.mean(), train.std(ddof=1)
    return loc, scale


def garch_backcast(resid: np.ndarray) -> float:
    """arch's GARCH backcast: exponentially weighted (0.94^k) mean of the first min(75, n) squared residuals."""
    tau = min(75, len(resid))
    w = 0.94 ** np.arange(tau)
    return float((resid[:tau] ** 2 * (w / w.sum())).sum())


def fit_garch_t(train_returns: np.ndarray) -> dict:
    """GARCH(1,1) with standardized Student-t errors, constant mean, on 100 x the training returns
    (`arch_model(100*r, mean="Constant", vol="GARCH", p=1, q=1, dist="t")`). Parameters in percent units:
    mu, omega, alpha, beta, nu, and the backcast (initial variance), computed as arch does from the training
    returns' deviations from their mean, so that the training-period variances equal the fit's.
    Without a usable fit (too short or constant training period, optimizer failure, nu <= 2, alpha + beta >= 1,
    non-finite values) the dict holds only `unusable`: the reason, which the report shows for the asset."""
    import warnings

    from arch import arch_model

    x = 100.0 * np.asarray(train_returns, dtype=np.float64)
    if len(x) < MIN_TRAIN_GARCH:
        return {"unusable": f"{len(x)} training returns, fewer than {MIN_TRAIN_GARCH}"}
    if not x.std() > 0:
        return {"unusable": "constant training returns"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = arch_model(x, mean="Constant", vol="GARCH", p=1, q=1, dist="t").fit(disp="off", show_warning=False)
    except Exception as exc:  # noqa: BLE001 - an optimizer failure means "no GARCH baseline for this asset"
        return {"unusable": f"the fit failed ({exc.__class__.__name__})"}
    mu, omega, alpha, beta, nu = (float(v) for v in np.asarray(res.params))
    if not (np.isfinite([mu, omega, alpha, beta, nu]).all() and omega > 0 and alpha >= 0 and beta >= 0):
        return {"unusable": f"invalid parameters (omega {omega:.3g}, alpha {alpha:.3g}, beta {beta:.3g})"}
    if alpha + beta >= 1:
        return {"unusable": f"alpha + beta = {alpha + beta:.4f} >= 1 (not stationary)"}
    if nu <= 2:
        return {"unusable": f"nu = {nu:.3f} <= 2 (infinite variance)"}
    return {"mu": mu, "omega": omega, "alpha": alpha, "beta": beta, "nu": nu,
            "backcast": garch_backcast(x - x.mean()), "convergence_flag": int(res.convergence_flag), "n_train": int(len(x))}


def garch_variance(x: np.ndarray, params: dict) -> np.ndarray:
    """One-step-ahead conditional variance (percent^2) for every day of x (percent returns):
    s2_0 = omega + (alpha + beta) backcast, s2_t = omega + alpha (x_{t-1} - mu)^2 + beta s2_{t-1}.
    Day t uses returns before t only; the parameters and backcast come from the training fit."""
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    if not len(x):
        return np.zeros(0)
    mu, omega, alpha, beta, bc = (params[k] for k in ("mu", "omega", "alpha", "beta", "backcast"))
    drive = np.empty(len(x))
    drive[0] = omega + (alpha + beta) * bc
    drive[1:] = omega + alpha * (x[:-1] - mu) ** 2
    return lfilter([1.0], [1.0, -beta], drive)


def garch_t(returns: np.ndarray, split: np.ndarray, asset: np.ndarray, n_assets: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """GARCH(1,1)-t fitted on each asset's training returns only, then run forward over all its rows with the
    fixed parameters (no refit on val/test data; each day's variance uses earlier returns only).

    `returns` are log returns ordered by date within each asset (rows of a TokenStore). Returns per row the
    Student-t (loc, scale, df) of the log return: loc = mu/100, scale = sigma/100 * sqrt((nu-2)/nu) (arch's
    t is standardized to unit variance), NaN where the asset has no fit; and the fitted params per asset."""
    n = len(returns)
    loc, scale, df = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    fits: dict[int, dict] = {}
    for a in range(n_assets):
        idx = np.flatnonzero(asset == a)
        if not len(idx):
            continue
        params = fit_garch_t(returns[idx][split[idx] == 0])
        fits[a] = params
        if "unusable" in params:
            continue
        s2 = garch_variance(100.0 * returns[idx], params)
        nu = params["nu"]
        loc[idx] = params["mu"] / 100.0
        scale[idx] = np.sqrt(s2) / 100.0 * np.sqrt((nu - 2) / nu)
        df[idx] = nu
    return loc, scale, df, fits


#: scored days between two refits of the expanding-window GARCH-t (a quarter of trading days): the test split of
#: the 281 daily series of ../shared/data (74k days) takes 1,135 fits, 55 s on 2 loaded CPU cores, and 77% of its
#: days get a forecast (the rest fall in an asset's first 250 returns)
REFIT_EVERY_DAYS = 63


def garch_t_expanding(returns: np.ndarray, split: np.ndarray, asset: np.ndarray, n_assets: int, scored: int,
                      refit_every: int = REFIT_EVERY_DAYS) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """GARCH(1,1)-t refitted on each asset's whole past before the days of one split (an expanding window), so
    that every asset with MIN_TRAIN_GARCH past returns gets a baseline, also those listed too late for a fit on
    the training period alone (most crypto of ../shared/data).

    Rule, per asset, over its rows of split `scored` in date order: fit `fit_garch_t` on all returns before the
    first such day with at least MIN_TRAIN_GARCH past returns, and again every `refit_every` scored days after
    it; between refits the parameters stay fixed and the variance runs forward over the realised returns before
    each day (`garch_variance` from the start of the asset, with the fit's own backcast). A day's forecast uses
    returns before it only. Same (loc, scale, df) per row as `garch_t` (NaN outside `scored`, before the first
    fit, or under an unusable one); per asset {"fits": n, "unusable": n, "missing": scored days without one}."""
    n = len(returns)
    loc, scale, df = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    info: dict[int, dict] = {}
    for a in range(n_assets):
        idx = np.flatnonzero(asset == a)
        days = np.flatnonzero(split[idx] == scored)
        if not len(days):
            continue
        x = 100.0 * returns[idx]
        usable = days[days >= MIN_TRAIN_GARCH]
        fits = bad = 0
        for start in range(0, len(usable), refit_every):
            block = usable[start:start + refit_every]
            params = fit_garch_t(returns[idx[:block[0]]])
            fits += 1
            if "unusable" in params:
                bad += 1
                continue
            s2 = garch_variance(x[:block[-1] + 1], params)[block]
            nu = params["nu"]
            rows = idx[block]
            loc[rows] = params["mu"] / 100.0
            scale[rows] = np.sqrt(s2) / 100.0 * np.sqrt((nu - 2) / nu)
            df[rows] = nu
        info[a] = {"fits": fits, "unusable": bad, "missing": int(np.isnan(scale[idx[days]]).sum())}
    return loc, scale, df, info
