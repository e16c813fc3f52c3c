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


class Bars:
    """Each asset's own bars in a panel: count[t, a] = bars of a up to row t, row_of[k, a] = the row of its bar k,
    n[a] = its number of bars. A dense panel (every asset has a bar on every row) has bars = rows."""

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

    @cached_property
    def _packed_from(self) -> np.ndarray:
        """Flat index into a (T, A) panel of the row of each packed cell (bar k of column a at packed row k)."""
        return self.row_of * self.valid.shape[1] + np.arange(self.valid.shape[1])

    @cached_property
    def _unpacked_from(self) -> np.ndarray:
        """Flat index into the packed panel of each row's cell (its bar; a row without a bar: a packed row past the
        column's bars)."""
        index = np.empty(self.valid.size, dtype=np.int64)
        A = self.valid.shape[1]
        index[self._packed_from.ravel()] = (np.arange(len(self.valid))[:, None] * A + np.arange(A)).ravel()
        return index.reshape(self.valid.shape)

    def pack(self, x: np.ndarray) -> np.ndarray:
        """(T, A) in bar space: column a's values at its bars 0..n_a - 1 on top, then what its other rows held."""
        return x if self.dense else np.take(x, self._packed_from)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """Back to rows; a row without a bar gets a packed cell past the column's bars."""
        return packed if self.dense else np.take(packed, self._unpacked_from)

    def shift(self, x: np.ndarray, back, fill=0.0) -> np.ndarray:
        """x at each asset's bar `back` bars before the one at (or last before) row t; `fill` where that bar does
        not exist. back may be negative (bars ahead) and per asset, an (A,) array."""
        if self.dense:
            return _slide(x, back, fill)
        k = self.count - 1 - np.asarray(back)
        ok = (k >= 0) & (k < self.n) & (self.count > 0)
        return np.where(ok, _take_rows(x, _take_rows(self.row_of, np.clip(k, 0, max(len(x) - 1, 0)))), fill)


def _take_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows[t, a], a]: a flat gather (take_along_axis on axis 0 was 5x slower on a 5,000 x 600 panel)."""
    return np.take(x, rows * x.shape[1] + np.arange(x.shape[1]))


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


def tranche_book(w: np.ndarray, horizon) -> np.ndarray:
    """D on consecutive bars (rows of a dense or packed panel): the mean of an asset's last h tranche weights, as
    the sum of h shifted copies, in place (on a 600 x 5,000 panel a fresh array costs more, in page faults, than
    the sums; and no cumulative sum drifts)."""
    h = np.broadcast_to(np.asarray(horizon), w.shape[1:])
    total = w.copy()
    book = total if (h == h.flat[0]).all() else np.empty_like(w)
    for j in range(1, int(h.max()) + 1):
        if j > 1 and j - 1 < len(w):
            total[j - 1:] += w[:len(w) - j + 1]
        if book is not total and (h == j).any():
            np.copyto(book, total, where=(h == j))
    book /= h
    return book


class Result:
    """Daily results of one backtest (T rows, A assets). book, pnl and trades are computed when first read."""

    def __init__(self, returns, turnover, cost, bars, parts):
        self.returns = returns                  # (T,) simple return of the book on each row, after costs
        self.equity = np.cumprod(1 + returns)   # (T,) running product (1 before the first row)
        self.turnover = turnover                # (T,) sum_a |change of position| filled on the row
        self.costs = cost * turnover            # (T,) fraction of the book paid on the row
        self._bars, self._cost, self._parts = bars, cost, parts    # per bar: new, old, gain_old, gain_new, change

    @cached_property
    def _pnl_new(self) -> np.ndarray:
        """What the position filled on each bar earned on it, less that fill's cost."""
        paid = self._parts["change"] * self._cost
        return -paid if self._parts["gain_new"] is None else self._parts["gain_new"] - paid

    @cached_property
    def book(self) -> np.ndarray:
        """(T, A) each asset's position after the row's fills (0 before its first bar and after it is sold)."""
        new, bars = self._parts["new"], self._bars
        return new if bars.dense else np.where(bars.count > 0, _take_rows(new, np.maximum(bars.count - 1, 0)), 0.0)

    @property
    def exposure(self) -> np.ndarray:
        """(T,) gross exposure sum_a |position| after each row's fills."""
        return np.abs(self.book).sum(axis=1)

    @cached_property
    def pnl(self) -> np.ndarray:
        """(T, A) additive contribution of each asset to the row's return, after its costs."""
        return self._bars.unpack(self._parts["gain_old"] + self._pnl_new)      # 0 on rows without a bar

    @cached_property
    def trades(self) -> np.ndarray:
        """P&L of each trade (see trade_pnl), in book units."""
        p = self._parts
        return trade_pnl(p["bar"], p["new"], p["old"], p["gain_old"], self._pnl_new)


def run(weights, close, open_=None, horizon=1, cost: float = 0.0, fill: str = "open") -> Result:
    """Backtest tranche weights (T, A) on close (and open) prices (T, A); see the module docstring.
    horizon: bars per tranche, one int or one per asset; cost: fraction per unit of turnover.

    Every asset's bars are packed on top of its column (bar k in packed row k), where all shifts are slices; the
    row sums then come back through each bar's row. A dense panel is its own packing."""
    close = np.asarray(close, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "open" and open_ is None:
        raise ValueError("fill 'open' needs open prices")
    T = len(close)
    bars = Bars(np.isfinite(close))
    bar = None if bars.dense else np.arange(T)[:, None] < bars.n         # packed rows that are bars
    w = bars.pack(weights)
    if np.isnan(w).any() or bar is not None:
        w = np.where(np.isnan(w) | (False if bar is None else ~bar), 0.0, w)
    book = tranche_book(w, horizon)
    new = _slide(book, 1, 0.0)                 # D_{k-1}: filled on bar k
    if bar is not None:                        # assets whose bars end before the panel: sold at their last bar
        last = np.maximum(bars.n - 1, 0)
        gone = np.flatnonzero((bars.n > 0) & (bars.row_of[last, np.arange(len(last))] < T - 1))
        new[last[gone], gone] = 0.0
    old = _slide(new, 1, 0.0)                  # D_{k-2}: held into bar k
    pclose = bars.pack(close)
    prev = _slide(pclose, 1, np.nan)
    change = np.subtract(new, old)
    np.abs(change, out=change)
    if fill == "open":
        popen = bars.pack(np.asarray(open_, dtype=np.float64))
        gain_old, gain_new = np.divide(popen, prev, out=prev), np.divide(pclose, popen)
    else:
        gain_old, gain_new = np.divide(pclose, prev, out=prev), None
    for gain, position in ((gain_old, old), (gain_new, new)):
        if gain is not None:
            gain -= 1
            gain *= position
            gain[0] = 0.0                      # an asset's first bar has no bar before it
            if bar is not None:
                gain[~bar] = 0.0
    if bar is not None:
        change[~bar] = 0.0
    # a row without a bar unpacks to a cell past its column's bars, which holds 0
    sums = [bars.unpack(x).sum(axis=1) for x in (gain_old, change, gain_new) if x is not None]
    factor = (1 + sums[0]) * (1 - cost * sums[1])
    if gain_new is not None:
        factor *= 1 + sums[2]
    parts = {"new": new, "old": old, "gain_old": gain_old, "gain_new": gain_new, "change": change,
             "bar": np.ones(new.shape, dtype=bool) if bar is None else bar}
    return Result(factor - 1, sums[1], cost, bars, parts)


def trade_pnl(valid, new, old, pnl_old, pnl_new) -> np.ndarray:
    """P&L of each trade: a run of bars in which an asset's position keeps one sign (long or short; a flip ends
    one trade and starts another), summing the contributions it earned (additive, in book units). pnl_old
    belongs to the position held into a bar, pnl_new (with the bar's cost) to the one filled on it, and a cost paid
    to go flat to the trade it closes. Trades still open at the end count with their P&L so far. Arrays (T, A) on
    consecutive bars of each asset; valid marks the bars."""
    sign_new, sign_old = np.sign(new), np.sign(old)
    start = valid & (sign_new != sign_old) & (sign_new != 0)
    starts = start.sum(axis=0)
    offset = np.concatenate([[0], np.cumsum(starts + 1)[:-1]])          # ids of column a: offset_a .. + starts_a
    held = np.cumsum(start, axis=0) + offset                             # the trade filled on or before each bar
    before = held - start                                                # the trade held into the bar
    filled = np.where(sign_new != 0, held, before)
    size = int(offset[-1] + starts[-1] + 1) if len(offset) else 0
    totals = np.bincount(before.ravel(), pnl_old.ravel(), size) + np.bincount(filled.ravel(), pnl_new.ravel(), size)
    return totals[held[start]]


#: rows an asset's last signal still counts in the book's denominator while it has no bar: a weekend plus a holiday
CARRY_ROWS = 4


def _carried(x: np.ndarray, limit: int = CARRY_ROWS) -> np.ndarray:
    """x with each NaN replaced by the column's last finite value at most `limit` rows back (else 0)."""
    rows = np.arange(len(x))[:, None]
    last = np.maximum.accumulate(np.where(np.isfinite(x), rows, -1), axis=0)
    taken = np.take_along_axis(x, np.maximum(last, 0), axis=0)
    return np.where((last >= 0) & (rows - last <= limit), np.nan_to_num(taken), 0.0)


def equal_weights(signal: np.ndarray, strength: np.ndarray | None = None) -> np.ndarray:
    """Tranche weights of a signal panel (T, A) in {-1, 0, 1}, NaN where an asset has no bar: each row's book
    shared equally by the assets with a signal, or in proportion to `strength` (e.g. confidence - 0.5:
    probability weighting).

    The share is taken over the assets whose latest signal is not FLAT, counting for up to CARRY_ROWS rows an
    asset that has no bar on the row. On a panel that mixes weekday and 7-day calendars, a weekend row then gives
    its crypto assets their usual share, not the whole book: sharing only among the assets with a bar on the row
    held always-long at a gross exposure of 1.27 on 48 stocks and 10 coins. Sum |w| = 1 on a row where every
    asset in the count has a bar."""
    s = np.asarray(signal, dtype=np.float64)
    size = np.abs(s) if strength is None else np.abs(s) * np.where(np.isfinite(s), np.nan_to_num(strength), np.nan)
    total = _carried(size).sum(axis=1, keepdims=True)
    s, size = np.nan_to_num(s), np.nan_to_num(size)
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
    return np.where(known.valid, _take_rows(s, _take_rows(known.row_of, source)), np.nan)
