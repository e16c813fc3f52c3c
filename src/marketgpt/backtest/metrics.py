"""Performance metrics of a daily return series, with their definitions (written into every report).

Risk-free rate 0. `periods` is the number of return periods in a year: 252 for a business-day (weekday) calendar,
365 for a calendar of every day (crypto); every annualised number uses it. The probabilistic and the deflated Sharpe
ratio follow Bailey & Lopez de Prado ("The Sharpe Ratio Efficient Frontier", 2012; "The Deflated Sharpe Ratio",
2014) on the per-period (not annualised) Sharpe ratio.
"""

from __future__ import annotations

import math

import numpy as np

PERIODS = {"business": 252, "daily": 365}
EULER_GAMMA = 0.5772156649015329

DEFINITIONS = {
    "total_return": "equity at the end / equity at the start - 1",
    "cagr": "(1 + total return) ^ (periods per year / number of periods) - 1",
    "volatility": "standard deviation of the period returns (ddof 1) x sqrt(periods per year)",
    "sharpe": "mean / standard deviation of the period returns x sqrt(periods per year), risk-free 0",
    "sortino": "mean period return / sqrt(mean(min(r, 0)^2)) x sqrt(periods per year)",
    "max_drawdown": "the lowest equity / running peak - 1",
    "max_drawdown_periods": "the longest run of periods below a previous peak (to the recovery, or the end)",
    "calmar": "CAGR / |max drawdown|",
    "win_rate_days": "share of periods with a position (exposure > 0) whose return is > 0",
    "profit_factor_days": "sum of the positive period returns / |sum of the negative ones|",
    "win_rate_trades": "share of trades with P&L > 0 (a trade: a run of bars with one sign of an asset's position)",
    "profit_factor_trades": "sum of the winning trades' P&L / |sum of the losing trades' P&L|",
    "trades": "number of trades",
    "turnover": "mean sum over assets of |change of position| per period x periods per year (1 = the whole book "
                "traded once a year)",
    "exposure": "mean gross exposure sum |position| over the periods",
    "hit_rate": "share of LONG/SHORT signals whose direction matched the realised close-to-close move over the "
                "horizon (signals whose outcome lies past the data are left out)",
    "psr": "probabilistic Sharpe ratio P(true Sharpe > 0) = Phi((SR - 0) sqrt(n - 1) / sqrt(1 - skew SR + "
           "(kurtosis - 1) / 4 SR^2)), SR per period, kurtosis not in excess",
    "dsr": "deflated Sharpe ratio: the PSR against SR0 = sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e))), "
           "N the configurations tried in this output folder (trials.json), V the variance of their per-period "
           "Sharpe ratios, g the Euler-Mascheroni constant; with N = 1, SR0 = 0 and DSR = PSR",
}


def sharpe(r: np.ndarray, periods: int = 1) -> float:
    """NaN for a constant series: its standard deviation is rounding error (below 1e-15)."""
    sd = np.std(r, ddof=1) if len(r) > 1 else 0.0
    return float(np.mean(r) / sd * math.sqrt(periods)) if sd > 1e-15 else float("nan")


def sortino(r: np.ndarray, periods: int = 1) -> float:
    down = math.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) if len(r) else 0.0
    return float(np.mean(r) / down * math.sqrt(periods)) if down > 0 else float("nan")


def drawdown(equity: np.ndarray) -> np.ndarray:
    """equity / running peak - 1 (the peak includes the starting equity of 1)."""
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return equity / peak - 1


def longest_underwater(dd: np.ndarray) -> int:
    """Length of the longest run of periods with drawdown < 0."""
    under = np.concatenate([[0], (dd < -1e-15).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(under))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def profit_factor(x: np.ndarray) -> float:
    gain, loss = x[x > 0].sum(), -x[x < 0].sum()
    return float(gain / loss) if loss > 0 else (float("inf") if gain > 0 else float("nan"))


def psr(r: np.ndarray, benchmark_sr: float = 0.0) -> float:
    """Probabilistic Sharpe ratio of per-period returns against a per-period benchmark Sharpe ratio."""
    from scipy.stats import kurtosis, norm, skew

    n = len(r)
    sr = sharpe(r)
    if n < 3 or not math.isfinite(sr):
        return float("nan")
    g3, g4 = float(skew(r)), float(kurtosis(r, fisher=False))
    var = 1 - g3 * sr + (g4 - 1) / 4 * sr**2
    return float(norm.cdf((sr - benchmark_sr) * math.sqrt(n - 1) / math.sqrt(var))) if var > 0 else float("nan")


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR0: the expected largest of n_trials per-period Sharpe ratios with true value 0 and this variance."""
    from scipy.stats import norm

    if n_trials <= 1 or not variance > 0:
        return 0.0
    return math.sqrt(variance) * ((1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials)
                                  + EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * math.e)))


def dsr(r: np.ndarray, trial_sharpes) -> float:
    """Deflated Sharpe ratio of r, given the per-period Sharpe ratios of every configuration tried (r's included)."""
    trial_sharpes = np.asarray([s for s in trial_sharpes if math.isfinite(s)], dtype=np.float64)
    n = max(len(trial_sharpes), 1)
    variance = float(np.var(trial_sharpes, ddof=1)) if n > 1 else 0.0
    return psr(r, expected_max_sharpe(n, variance))


def summarize(returns: np.ndarray, periods: int, exposure: np.ndarray | None = None,
              turnover: np.ndarray | None = None, trades: np.ndarray | None = None) -> dict:
    """Every metric of DEFINITIONS that a return series (and its exposure, turnover, trades) gives."""
    r = np.asarray(returns, dtype=np.float64)
    equity = np.cumprod(1 + r)
    total = float(equity[-1] - 1) if len(r) else float("nan")
    cagr = float((1 + total) ** (periods / len(r)) - 1) if len(r) and total > -1 else float("nan")
    dd = drawdown(equity) if len(r) else np.zeros(0)
    mdd = float(dd.min()) if len(dd) else float("nan")
    out = {"periods": len(r), "periods_per_year": periods, "total_return": total, "cagr": cagr,
           "volatility": float(np.std(r, ddof=1) * math.sqrt(periods)) if len(r) > 1 else float("nan"),
           "sharpe": sharpe(r, periods), "sortino": sortino(r, periods), "max_drawdown": mdd,
           "max_drawdown_periods": longest_underwater(dd),
           "calmar": float(cagr / -mdd) if mdd < 0 else float("nan"),
           "profit_factor_days": profit_factor(r), "psr": psr(r)}
    active = r if exposure is None else r[np.asarray(exposure) > 1e-12]
    out["win_rate_days"] = float((active > 0).mean()) if len(active) else float("nan")
    if exposure is not None:
        out["exposure"] = float(np.mean(exposure))
    if turnover is not None:
        out["turnover"] = float(np.mean(turnover) * periods)
    if trades is not None:
        trades = np.asarray(trades, dtype=np.float64)
        out["trades"] = len(trades)
        out["win_rate_trades"] = float((trades > 0).mean()) if len(trades) else float("nan")
        out["profit_factor_trades"] = profit_factor(trades)
    return out
