"""The backtest engine: vectorised numpy over a (days x assets) panel, with no Python loop over days.

**Inputs.** `weights[t, a]`: the tranche an asset's signal asks for at the close of row t, as a signed fraction of
the book (0 where there is no signal); `close` / `open` prices (NaN where the asset has no bar that row: a stock on
a Saturday of a panel that holds crypto, before listing, after delisting). An asset whose bars end before the
panel's last row is sold at its last bar (its open or close, by the fill), paying the cost.

**Bars.** Each asset runs on its own bars, its rows with a close. "The previous bar", "h bars" and the fills below
are counted on them, so a stock's one-week tranche is 5 of its bars also in a panel of every calendar day. Between
its bars an asset's position and price stand still.

**Tranches.** A signal for an h-bar horizon is held h bars: the book of an asset after bar k is
D_k = (w_k + w_{k-1} + ... + w_{k-h+1}) / h, each tranche 1/h of its weight, so a new signal moves the book a
little every day and never all at once.

**Fills.** D_k is known at the close of bar k and trades at the next bar, k + 1:
- fill "open" (default: the first price at which the signal can trade): at the open of bar k + 1. Bar k + 1 then
  earns the overnight move C_k -> O_{k+1} on the old book D_{k-1} and the day O_{k+1} -> C_{k+1} on D_k.
- fill "close": at the close of bar k + 1. Bar k + 1 earns C_k -> C_{k+1} on the old book D_{k-1}, and D_k first
  earns on bar k + 2. A day later than "open", with no overnight/intraday split.
Either way the return of bar k + 1 uses positions decided at bars <= k only.

**Costs.** At each fill, (cost + slippage) per unit of turnover sum_a |D_k - D_{k-1}| is taken off the book, so
entering and leaving a position pays the cost twice (the round trip of signals.py). The drift of weights between
fills is not traded (weights are fractions of the current book, rebalanced for free): only decided changes pay.

**Day factor** of the whole book on a row: open fill (1 + sum D_{k-1} g)(1 - c turnover)(1 + sum D_k i), close fill
(1 + sum D_{k-1} r)(1 - c turnover), with g, i, r the overnight, intraday and close-to-close simple returns of the
assets that have a bar on the row. Equity is the running product; a short position earns -r.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

FILLS = ("open", "close")


class Result:
    """Daily results of one backtest (T rows, A assets). book, pnl and trades are computed when first read."""

    def __init__(self, returns, turnover, cost, bars, new, old, gain_old, gain_new, change):
        self.returns = returns                  # (T,) simple return of the book on each row, after costs
        self.equity = np.cumprod(1 + returns)   # (T,) running product (1 before the first row)
        self.turnover = turnover                # (T,) sum_a |change of position| filled on the row
        self.costs = cost * turnover            # (T,) fraction of the book paid on the row
        self._bars, self._new, self._old, self._cost = bars, new, old, cost
        self._gain_old, self._gain_new, self._change = gain_old, gain_new, change

    @cached_property
    def _pnl_new(self) -> np.ndarray:
        """(T, A) what the position filled on each row earned on it, less that fill's cost."""
        paid = self._change * self._cost
        return -paid if self._gain_new is None else self._gain_new - paid

    @cached_property
    def book(self) -> np.ndarray:
        """(T, A) each asset's position after the row's fills (0 before its first bar)."""
        return self._new if self._bars.dense else np.where(self._bars.count > 0, self._new, 0.0)

    @property
    def exposure(self) -> np.ndarray:
        """(T,) gross exposure sum_a |position| after each row's fills."""
        return np.abs(self.book).sum(axis=1)

    @cached_property
    def pnl(self) -> np.ndarray:
        """(T, A) additive contribution of each asset to the row's return, after its costs."""
        return self._gain_old + self._pnl_new

    @cached_property
    def trades(self) -> np.ndarray:
        """P&L of each trade (see trade_pnl), in book units."""
        return trade_pnl(self._bars, self._new, self._old, self._gain_old, self._pnl_new)


class Bars:
    """Each asset's own bars in a panel: count[t, a] = bars of a up to row t, row_of[k, a] = the row of its bar k.
    A dense panel (every asset has a bar on every row) has bars = rows, and every shift is a slice."""

    def __init__(self, valid: np.ndarray):
        self.valid = valid
        self.dense = bool(valid.all())

    @cached_property
    def count(self) -> np.ndarray:
        return np.cumsum(self.valid, axis=0)

    @cached_property
    def row_of(self) -> np.ndarray:
        return np.argsort(~self.valid, axis=0, kind="stable")

    @cached_property
    def n(self) -> np.ndarray:
        return self.valid.sum(axis=0)

    def ended(self) -> np.ndarray | None:
        """(T, A): rows from the last bar on, of each asset whose bars end before the panel does (None: none)."""
        if self.dense:
            return None
        T = len(self.valid)
        last = np.take_along_axis(self.row_of, np.maximum(self.n - 1, 0)[None, :], axis=0)[0]
        return (np.arange(T)[:, None] >= last) & ((last < T - 1) & (self.n > 0))[None, :]

    def shift(self, x: np.ndarray, back, fill=0.0) -> np.ndarray:
        """x at each asset's bar `back` bars before the one at (or last before) row t; `fill` where that bar does
        not exist. back may be negative (bars ahead) and per asset, an (A,) array."""
        if self.dense:
            return _slide(x, back, fill)
        k = self.count - 1 - np.asarray(back)
        ok = (k >= 0) & (k < self.n) & (self.count > 0)
        rows = np.take_along_axis(self.row_of, np.clip(k, 0, max(len(x) - 1, 0)), axis=0)
        return np.where(ok, np.take_along_axis(x, rows, axis=0), fill)


def _slide(x: np.ndarray, back, fill) -> np.ndarray:
    """x moved down `back` rows (up for negative), `fill` in the rows it leaves; back one int or one per column."""
    back = np.asarray(back)
    if back.ndim:
        out = np.full(x.shape, fill, dtype=np.result_type(x, np.asarray(fill)))
        for b in np.unique(back):
            out = np.where(back == b, _slide(x, int(b), fill), out)
        return out
    b, T = int(back), len(x)
    out = np.empty(x.shape, dtype=np.result_type(x, np.asarray(fill)))
    if b >= 0:
        out[:min(b, T)] = fill
        out[b:] = x[:T - b] if b < T else out[b:]
    else:
        out[max(T + b, 0):] = fill
        out[:b] = x[-b:] if -b < T else out[:b]
    return out


def tranche_book(weights: np.ndarray, bars: Bars, horizon) -> np.ndarray:
    """D at every row: the mean of an asset's last h tranche weights over its own bars (held flat between bars).
    A dense panel adds h shifted copies (exact, and faster than a cumulative sum for short horizons)."""
    h = np.broadcast_to(np.asarray(horizon), weights.shape[1:])
    w = np.where(np.isnan(weights), 0.0, weights) if np.isnan(weights).any() else weights
    if not bars.dense:
        w = np.where(bars.valid, w, 0.0)
        total = np.cumsum(w, axis=0)
        return (total - bars.shift(total, h)) / h
    # in place: on a 600 x 5,000 panel a fresh array costs more (page faults) than the sums themselves
    total = w.copy()
    book = total if (h == h.flat[0]).all() else np.empty_like(w)
    for j in range(1, int(h.max()) + 1):
        if j > 1 and j - 1 < len(w):
            total[j - 1:] += w[:len(w) - j + 1]
        if book is not total and (h == j).any():
            np.copyto(book, total, where=(h == j))
    book /= h
    return book


def run(weights, close, open_=None, horizon=1, cost: float = 0.0, fill: str = "open") -> Result:
    """Backtest tranche weights (T, A) on close (and open) prices (T, A); see the module docstring.
    horizon: bars per tranche, one int or one per asset; cost: fraction per unit of turnover."""
    close = np.asarray(close, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "open" and open_ is None:
        raise ValueError("fill 'open' needs open prices")
    bars = Bars(np.isfinite(close))
    book = tranche_book(weights, bars, horizon)
    new = bars.shift(book, 1)                  # D_{k-1}: filled on bar k
    ended = bars.ended()
    if ended is not None:
        new[ended] = 0.0
    old = bars.shift(book, 2)                  # D_{k-2}: held into bar k
    prev_close = bars.shift(close, 1, np.nan)
    # rows that earn nothing: an asset's first bar (no bar before it) and rows without a bar; dense: row 0 only
    first = 0 if bars.dense else ~(np.isfinite(prev_close) & bars.valid)
    change = np.subtract(new, old)
    np.abs(change, out=change)
    if not bars.dense:
        change[~bars.valid] = 0.0
    if fill == "open":
        open_ = np.asarray(open_, dtype=np.float64)
        gain_old = np.divide(open_, prev_close, out=prev_close)
        gain_new = np.divide(close, open_)
    else:
        gain_old, gain_new = np.divide(close, prev_close, out=prev_close), None
    gain_old -= 1
    gain_old *= old
    gain_old[first] = 0.0
    turnover = change.sum(1)
    factor = (1 + gain_old.sum(1)) * (1 - cost * turnover)
    if gain_new is not None:
        gain_new -= 1
        gain_new *= new
        gain_new[first] = 0.0
        factor *= 1 + gain_new.sum(1)
    return Result(factor - 1, turnover, cost, bars, new, old, gain_old, gain_new, change)


def trade_pnl(bars: Bars, new, old, pnl_old, pnl_new) -> np.ndarray:
    """P&L of each trade: a run of bars in which an asset's position keeps one sign (long or short; a flip ends
    one trade and starts another), summing the row contributions it earned (additive, in book units). pnl_old
    belongs to the position held into a bar, pnl_new (with the bar's cost) to the one filled on it, and a cost paid
    to go flat to the trade it closes. Trades still open at the end count with their P&L so far."""
    sign_new, sign_old = np.sign(new), np.sign(old)
    start = bars.valid & (sign_new != sign_old) & (sign_new != 0)
    starts = start.sum(axis=0)
    offset = np.concatenate([[0], np.cumsum(starts + 1)[:-1]])          # ids of column a: offset_a .. + starts_a
    held = np.cumsum(start, axis=0) + offset                             # the trade filled on or before each row
    before = held - start                                                # the trade held into the row
    filled = np.where(sign_new != 0, held, before)
    size = int(offset[-1] + starts[-1] + 1) if len(offset) else 0
    totals = np.bincount(before.ravel(), pnl_old.ravel(), size) + np.bincount(filled.ravel(), pnl_new.ravel(), size)
    return totals[held[start]]


def equal_weights(signal: np.ndarray, strength: np.ndarray | None = None) -> np.ndarray:
    """Tranche weights of a signal panel (T, A) in {-1, 0, 1}: each row's book shared equally by the assets with
    a signal, or in proportion to `strength` (e.g. confidence - 0.5: probability weighting). Sum |w| = 1 on a row
    with any signal, 0 on a row without."""
    s = np.nan_to_num(np.asarray(signal, dtype=np.float64))
    size = np.abs(s) if strength is None else np.abs(s) * np.nan_to_num(strength)
    total = size.sum(axis=1, keepdims=True)
    return np.divide(np.sign(s) * size, total, out=np.zeros_like(s), where=total > 0)


def momentum_signal(close: np.ndarray, bars: Bars, lookback: int, skip: int) -> np.ndarray:
    """Time-series momentum: the sign of an asset's return from `lookback` bars ago to `skip` bars ago (12-1:
    lookback a year, skip a month), known at the close of each row. 0 until the asset has the history."""
    past, recent = bars.shift(close, lookback, np.nan), bars.shift(close, skip, np.nan)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(past) & np.isfinite(recent), np.sign(recent - past), 0.0)


def random_signal(signal: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random signal with the strategy's turnover: each asset's own signals (on the rows where it has one) rotated
    in time by a random offset. The values, their runs, and so the trades, turnover and exposure are the
    strategy's (up to the one run cut at the wrap), while their timing no longer knows the returns."""
    s = np.asarray(signal, dtype=np.float64)
    known = Bars(np.isfinite(s))
    rng = np.random.default_rng(seed)
    offset = rng.integers(0, np.maximum(known.n, 1))
    source = np.where(known.n > 0, (known.count - 1 + offset) % np.maximum(known.n, 1), 0)
    rows = np.take_along_axis(known.row_of, source, axis=0)
    return np.where(known.valid, np.take_along_axis(s, rows, axis=0), np.nan)
